"""The /sys/block/zramN control files as pure state: ZramDevice and DeviceTable.

A ZramDevice holds one device's configuration (disksize, compression algorithm
and its parameters, mem_limit) and, once `disksize` initialises it, the
PageStore with its pages.  Its attributes are read and written as bytes with
the kernel's formats and errors (drivers/block/zram/zram_drv.c): a rejected
write raises ControlError with the kernel's errno and changes nothing.  The
DeviceTable mirrors /sys/class/zram-control (hot_add, hot_remove).  Nothing
here knows about FUSE or files; the shell maps files onto these calls and the
errno of a ControlError onto its reply.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .codecs import (
    ALGORITHMS,
    AlgorithmParams,
    Codec,
    CodecError,
    ParamRangeError,
    make_codec,
    parse_algorithm_params,
    split_args,
)
from .pagestore import (
    MAX_PRIORITY,
    PAGE_SIZE,
    WB_HUGE,
    WB_IDLE,
    WB_INCOMPRESSIBLE,
    PageStore,
    StoreStatistics,
)
from .sizes import memparse
from .zsmalloc import HUGE_CLASS_SIZE

DEFAULT_ALGORITHM = "lz4"
# sysfs hands a store() at most one page; longer writes are refused outright.
MAX_CONTROL_WRITE = 4096
# The largest disksize the image can show: a file's size is a signed 64-bit off_t
# (FUSE's s_maxbytes is MAX_LFS_FILESIZE, 2**63 - 1), rounded down to a page.
MAX_DISKSIZE = ((1 << 63) - 1) // PAGE_SIZE * PAGE_SIZE


class BackingStore(Protocol):
    """What a device keeps of its backing store (zramfs.backing opens the real ones)."""

    path: str
    nblocks: int

    def read_block(self, block: int) -> bytes: ...

    def read_blocks(self, blocks: list[int]) -> list[bytes | OSError]: ...

    def write_blocks(self, blocks: list[int], data: list[bytes]) -> set[int]: ...

    def discard_blocks(self, blocks: list[int]) -> None: ...

    def close(self) -> None: ...


# The number a control file's open_backing hook gets (a path) and returns (a store).
OpenBacking = Callable[[str], BackingStore]
AUTO_WRITEBACK_DEFAULT = 90  # percent of mem_limit, once backing_dev and mem_limit are set
AUTO_COMPACT_DEFAULT = 25  # percent of the pool's pages wasted inside zspages


@dataclass(frozen=True)
class WritebackRequest:
    """A parsed write to `writeback`: the scans the kernel would make, each
    (mode, first page, end page), mode a combination of WB_IDLE/WB_HUGE/WB_INCOMPRESSIBLE."""

    scans: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class RecompressRequest:
    """A parsed write to `recompress` (see PageStore.select_recompress/recompress)."""

    mode: int
    threshold: int
    max_pages: int | None
    prio: int
    prio_max: int


class ControlError(OSError):
    """A control-file write or read refused with the kernel's errno."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


@dataclass(frozen=True)
class DeviceStatistics:
    """One device's state for the stats renderings: configuration plus store counters."""

    dev_id: int
    disksize: int
    algorithm: str
    mem_limit: int
    initialised: bool
    open_count: int
    store: StoreStatistics | None
    backing_dev: str = "none"  # the backing store's path, "none" when unset
    auto_writeback: int = 0  # percent of mem_limit (0: off)


# ZRAM_MAX_ALGO_NAME_SZ: a comp_algorithm write this long or longer is E2BIG.
MAX_ALGO_NAME = 128


def _raw_text(data: bytes) -> str:
    """A control write as a store() sees it: kernfs ends the buffer with a NUL, so the text
    stops at the first NUL in the data (what follows is ignored, as by the kernel)."""
    if len(data) > MAX_CONTROL_WRITE:
        raise ControlError(errno.EINVAL, f"write of {len(data)} bytes is over {MAX_CONTROL_WRITE}")
    data = data.split(b"\0", 1)[0]
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ControlError(errno.EINVAL, "not ASCII text") from None


def _text(data: bytes) -> str:
    """_raw_text with one trailing newline dropped (what echo appends)."""
    text = _raw_text(data)
    return text[:-1] if text.endswith("\n") else text


def _kstrtoint(text: str) -> int:
    """The kernel's kstrtoint(buf, 10) (lib/kstrtox.c): an optional '-' or '+', decimal
    digits, at most one newline, nothing else (EINVAL); outside a C int, ERANGE. ``-0`` is 0."""
    negative = text.startswith("-")
    body = text[1:] if negative or text.startswith("+") else text
    digits = body[:-1] if body.endswith("\n") else body
    if not digits or not all("0" <= ch <= "9" for ch in digits):
        raise ControlError(errno.EINVAL, f"not a number: {text!r}")
    value = -int(digits) if negative else int(digits)
    if not -(1 << 31) <= value < 1 << 31:
        raise ControlError(errno.ERANGE, f"number out of range: {text!r}")
    return value


def _kstrtoul(text: str) -> int:
    """The kernel's kstrtoul(buf, 10): decimal digits, an optional leading '+', nothing else."""
    body = text[1:] if text.startswith("+") else text
    if not body.isdigit() or not body.isascii():
        raise ControlError(errno.EINVAL, f"not a number: {text!r}")
    value = int(body)
    if value >= 1 << 64:
        raise ControlError(errno.ERANGE, f"number out of range: {text!r}")
    return value


def _memparse(text: str) -> tuple[int, int]:
    """sizes.memparse (the kernel's, lax: a unit letter ends it, the rest is ignored), but
    a value of 2**64 or more, which the kernel would silently wrap, is refused (EINVAL)."""
    value, used = memparse(text)
    if value >= 1 << 64:
        raise ControlError(errno.EINVAL, f"size {text!r} is 2**64 bytes or more")
    return value, used


def _build_codec(
    algorithm: str, params: AlgorithmParams | None, dictionary: bytes | None
) -> Codec:
    """The codec for ``algorithm`` with its stored algorithm_params; a refusal is EINVAL,
    as the kernel's disksize answers when a backend cannot be set up with them."""
    try:
        if params is None:
            return make_codec(algorithm)
        return make_codec(
            algorithm,
            level=params.level,
            dict_path=params.dict_path,
            dictionary=dictionary,
            winbits=params.winbits,
        )
    except CodecError as exc:
        raise ControlError(errno.EINVAL, str(exc)) from None


class ZramDevice:
    """One zram device: the attributes of /sys/block/zramN over an optional PageStore."""

    # name -> mode, as sysfs shows them (0444 read-only, 0200 write-only, 0644 both).
    ATTRIBUTES: dict[str, int] = {
        "disksize": 0o644,
        "initstate": 0o444,
        "reset": 0o200,
        "comp_algorithm": 0o644,
        "algorithm_params": 0o200,
        "mem_limit": 0o200,
        "mem_used_max": 0o200,
        "compact": 0o200,
        "idle": 0o200,
        "mm_stat": 0o444,
        "io_stat": 0o444,
        "debug_stat": 0o444,
        # the writeback and recompression tier (kernel ABI)
        "backing_dev": 0o644,
        "writeback": 0o200,
        "writeback_limit_enable": 0o644,
        "writeback_limit": 0o644,
        "bd_stat": 0o444,
        "recomp_algorithm": 0o644,
        "recompress": 0o200,
        # beyond the kernel
        "auto_writeback": 0o644,
        "policy_interval": 0o644,
        "recompress_after": 0o644,
        "writeback_after": 0o644,
        "auto_compact": 0o644,
        # the background policy's recompression conditions, in `recompress`'s syntax
        "recompress_params": 0o644,
    }

    def __init__(self, dev_id: int, open_backing: OpenBacking | None = None) -> None:
        self.dev_id = dev_id
        self._open_backing = open_backing
        self.backing: BackingStore | None = None
        # Writebacks and recompressions in flight (the shell's): reset waits for none.
        self.busy = 0
        self.open_count = 0
        # Set by DeviceTable.hot_remove: control files opened before then answer ENODEV.
        self.removed = False
        self.store: PageStore | None = None
        self._reset_config()
        self._readers: dict[str, Callable[[], str]] = {
            "disksize": lambda: f"{self.disksize}\n",
            "initstate": lambda: f"{int(self.store is not None)}\n",
            "comp_algorithm": self._show_comp_algorithm,
            "mm_stat": self._show_mm_stat,
            "io_stat": self._show_io_stat,
            "debug_stat": lambda: "version: 1\n0 %8d\n" % 0,
            "backing_dev": lambda: f"{self.backing.path if self.backing else 'none'}\n",
            "writeback_limit_enable": lambda: f"{int(self.writeback_limit_enable)}\n",
            "writeback_limit": lambda: f"{self._writeback_limit()}\n",
            "bd_stat": self._show_bd_stat,
            "recomp_algorithm": self._show_recomp_algorithm,
            "auto_writeback": lambda: f"{self.auto_writeback}\n",
            "policy_interval": lambda: f"{self.policy_interval}\n",
            "recompress_after": lambda: f"{self.recompress_after}\n",
            "writeback_after": lambda: f"{self.writeback_after}\n",
            "auto_compact": lambda: f"{self.auto_compact}\n",
            "recompress_params": lambda: f"{self.recompress_params}\n",
        }
        self._writers: dict[str, Callable[[str], None]] = {
            "disksize": self._store_disksize,
            "reset": self._store_reset,
            "comp_algorithm": self._store_comp_algorithm,
            "algorithm_params": self._store_algorithm_params,
            "mem_limit": self._store_mem_limit,
            "mem_used_max": self._store_mem_used_max,
            "compact": self._store_compact,
            "idle": self._store_idle,
            "backing_dev": self._store_backing_dev,
            "writeback": self._store_writeback,
            "writeback_limit_enable": self._store_writeback_limit_enable,
            "writeback_limit": self._store_writeback_limit,
            "recomp_algorithm": self._store_recomp_algorithm,
            "recompress": self._store_recompress,
            "auto_writeback": self._store_auto_writeback,
            "policy_interval": lambda t: self._store_seconds("policy_interval", t),
            "recompress_after": lambda t: self._store_seconds("recompress_after", t),
            "writeback_after": lambda t: self._store_seconds("writeback_after", t),
            "auto_compact": self._store_auto_compact,
            "recompress_params": self._store_recompress_params,
        }

    def _reset_config(self) -> None:
        self.disksize = 0
        self.algorithm = DEFAULT_ALGORITHM
        self.params: dict[str, AlgorithmParams] = {}
        self.dictionaries: dict[str, bytes] = {}  # algorithm -> its dict= file's bytes
        self.mem_limit = 0
        # the tier
        self.recomp: dict[int, str] = {}  # priority -> recompression algorithm
        self.recomp_params: dict[int, AlgorithmParams] = {}
        self.recomp_dictionaries: dict[int, bytes] = {}
        self.writeback_limit_enable = False
        self._wb_limit = 0  # used until the store exists, then the store's
        self._auto_writeback: int | None = None  # None: the default rule
        self.policy_interval = 0
        self.recompress_after = 0
        self.writeback_after = 0
        self.auto_compact = AUTO_COMPACT_DEFAULT
        self.recompress_params = ""  # conditions for the policy's recompression ("": none)

    @property
    def name(self) -> str:
        return f"zram{self.dev_id}"

    @property
    def initialised(self) -> bool:
        return self.store is not None

    # -- the attribute interface -------------------------------------------------------

    def readable(self, attr: str) -> bool:
        return attr in self._readers

    def writable(self, attr: str) -> bool:
        return attr in self._writers

    def read_attr(self, attr: str) -> bytes:
        reader = self._readers.get(attr)
        if reader is None:
            raise ControlError(errno.EACCES, f"{attr} is not readable")
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        return reader().encode()

    def write_attr(self, attr: str, data: bytes) -> None:
        writer = self._writers.get(attr)
        if writer is None:
            raise ControlError(errno.EACCES, f"{attr} is not writable")
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        text = _raw_text(data)
        if attr == "comp_algorithm" and len(text) >= MAX_ALGO_NAME:
            # __comp_algorithm_store(): strlen(buf), the newline included, before any lookup
            raise ControlError(errno.E2BIG, f"algorithm name of {len(text)} bytes is too long")
        writer(text[:-1] if text.endswith("\n") else text)

    # -- programmatic set-up (the CLI's --size/--algorithm/--mem-limit) -------------------

    def configure(self, disksize: int, algorithm: str, mem_limit: int = 0) -> None:
        """Select the algorithm, set the limit and initialise, as the three writes would."""
        self._store_comp_algorithm(algorithm)
        self._store_mem_limit(str(mem_limit))
        if disksize:
            self._store_disksize(str(disksize))

    def statistics(self) -> DeviceStatistics:
        return DeviceStatistics(
            dev_id=self.dev_id,
            disksize=self.disksize,
            algorithm=self.algorithm,
            mem_limit=self.mem_limit,
            initialised=self.store is not None,
            open_count=self.open_count,
            store=self.store.statistics() if self.store is not None else None,
            backing_dev=self.backing.path if self.backing is not None else "none",
            auto_writeback=self.auto_writeback,
        )

    @property
    def auto_writeback(self) -> int:
        """The automatic writeback mark in percent of mem_limit (0: off): as written, else
        AUTO_WRITEBACK_DEFAULT once both a backing store and a mem_limit are set."""
        if self._auto_writeback is not None:
            return self._auto_writeback
        return AUTO_WRITEBACK_DEFAULT if self.backing is not None and self.mem_limit else 0

    # -- readers ---------------------------------------------------------------------

    def _show_comp_algorithm(self) -> str:
        names = (f"[{a}]" if a == self.algorithm else a for a in ALGORITHMS)
        return " ".join(names) + " \n"

    def _show_mm_stat(self) -> str:
        fmt = "%8d %8d %8d %8d %8d %8d %8d %8d %8d\n"
        s = self.store.statistics() if self.store is not None else None
        if s is None:  # the kernel prints zeros, but the limit, before initialisation
            return fmt % (0, 0, 0, self.mem_limit, 0, 0, 0, 0, 0)
        return fmt % (
            s.orig_data_size,
            s.compr_data_size,
            s.mem_used_total,
            s.mem_limit,
            s.mem_used_max,
            s.same_pages,
            s.pages_compacted,
            s.huge_pages,
            s.huge_pages_since,
        )

    def _show_io_stat(self) -> str:
        # io_stat_show(): "%8llu %8llu 0 %8llu\n", the third column (once invalid_io) a bare 0
        if self.store is None:
            return "%8d %8d 0 %8d\n" % (0, 0, 0)
        s = self.store.statistics()
        return "%8d %8d 0 %8d\n" % (s.failed_reads, s.failed_writes, s.notify_free)

    # -- writers: each validates fully before it changes anything ----------------------

    def _require_uninitialised(self, attr: str) -> None:
        if self.store is not None:
            raise ControlError(errno.EBUSY, f"{attr}: {self.name} is initialised; reset it first")

    def _require_initialised(self, attr: str) -> PageStore:
        if self.store is None:
            raise ControlError(errno.EINVAL, f"{attr}: {self.name} is not initialised")
        return self.store

    def _codec(self, algorithm: str) -> Codec:
        return _build_codec(
            algorithm, self.params.get(algorithm), self.dictionaries.get(algorithm)
        )

    def _store_disksize(self, text: str) -> None:
        # As disksize_store(): memparse, then 0 (which is also "nothing parsed") is EINVAL,
        # before the EBUSY of an initialised device.
        size, _ = _memparse(text)
        if size == 0:
            raise ControlError(errno.EINVAL, f"disksize {text!r}: not a size above 0")
        self._require_uninitialised("disksize")
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        # fix (tests/test_reliability_faults.py fuzz): a size of 2**63 or more was accepted
        # and then every stat of the image failed with EIO (OverflowError setting st_size).
        # The kernel answers ENOMEM for a size it cannot hold; so does this.
        if size > MAX_DISKSIZE:
            raise ControlError(errno.ENOMEM, f"disksize {size} is over {MAX_DISKSIZE}")
        codec = self._codec(self.algorithm)
        recomp = {prio: self._recomp_codec(prio) for prio in self.recomp}
        store = PageStore(size, codec, mem_limit=self.mem_limit)
        store.set_recompression(recomp)
        store.writeback_limit_enable = self.writeback_limit_enable
        store.writeback_limit = self._wb_limit
        if self.backing is not None:
            store.attach_backing(self.backing.nblocks, self.backing.read_block)
        self.store = store
        self.disksize = size

    def _store_reset(self, text: str) -> None:
        value = _kstrtoul(text)
        if value > 0xFFFF:  # reset_store() reads it with kstrtou16
            raise ControlError(errno.ERANGE, f"number out of range: {text!r}")
        if value == 0:
            raise ControlError(errno.EINVAL, "reset takes a non-zero number")
        if self.open_count:
            raise ControlError(errno.EBUSY, f"{self.name} is open ({self.open_count} opens)")
        if self.busy:
            raise ControlError(errno.EBUSY, f"{self.name} has a writeback or recompression running")
        self.reset()

    def reset(self) -> None:
        """Free every page and go back to the uninitialised defaults (no checks); as the
        kernel's reset, this also lets go of the backing store."""
        store, self.store = self.store, None
        if store is not None:
            store.close()
        backing, self.backing = self.backing, None
        if backing is not None:
            backing.close()
        self._reset_config()

    def _store_comp_algorithm(self, text: str) -> None:
        name = text  # only the trailing newline is dropped, as the kernel does
        if name not in ALGORITHMS:
            known = " ".join(ALGORITHMS)
            raise ControlError(errno.EINVAL, f"unknown algorithm {name!r}; one of {known}")
        self._require_uninitialised("comp_algorithm")
        self.algorithm = name

    def _store_algorithm_params(self, text: str) -> None:
        params = self._parse_algorithm_params(text)
        if params.dict_path is not None:
            # The dictionary file is read by the shell (zramfs.dictionary), on a worker
            # thread: this pure core does no file I/O.
            raise ControlError(errno.EINVAL, "dict= needs the shell to read the file first")
        self.apply_algorithm_params(params, None)

    def prepare_algorithm_params(self, data: bytes) -> AlgorithmParams:
        """Validate an algorithm_params write as far as it can be without reading a file:
        the shell calls this, reads params.dict_path if set, then apply_algorithm_params."""
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        return self._parse_algorithm_params(_text(data))

    def _parse_algorithm_params(self, text: str) -> AlgorithmParams:
        try:
            params = parse_algorithm_params(text)
        except ParamRangeError as exc:
            raise ControlError(errno.ERANGE, str(exc)) from None
        except CodecError as exc:
            raise ControlError(errno.EINVAL, str(exc)) from None
        prio = self._params_priority(params)
        if prio and prio not in self.recomp:
            raise ControlError(errno.EINVAL, f"no recompression algorithm at priority {prio}")
        self._require_uninitialised("algorithm_params")
        return params

    def apply_algorithm_params(self, params: AlgorithmParams, dictionary: bytes | None) -> None:
        """Take ``params`` (from prepare_algorithm_params, with ``dictionary`` the bytes of
        its dict= file) for the algorithm they name, replacing that algorithm's earlier
        parameters. As the kernel's algorithm_params_store(), the level is not checked
        here: make_codec checks it when disksize initialises the device."""
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        prio = self._params_priority(params)  # again: comp/recomp_algorithm may have changed
        self._require_uninitialised("algorithm_params")
        if params.dict_path is not None and dictionary is None:
            raise ControlError(errno.EINVAL, f"dictionary {params.dict_path!r} was not read")
        if prio:
            if prio not in self.recomp:
                raise ControlError(errno.EINVAL, f"no recompression algorithm at priority {prio}")
            self.recomp_params[prio] = params
            if dictionary is None:
                self.recomp_dictionaries.pop(prio, None)
            else:
                self.recomp_dictionaries[prio] = dictionary
            return
        self.params[self.algorithm] = params
        if dictionary is None:
            self.dictionaries.pop(self.algorithm, None)
        else:
            self.dictionaries[self.algorithm] = dictionary

    def _params_priority(self, params: AlgorithmParams) -> int:
        """Which algorithm an algorithm_params write is for, as algorithm_params_store():
        algo= names one selected at some priority (the primary first; it overrides any
        priority=), else priority=N (0, the primary, when absent) within 0..MAX_PRIORITY."""
        if params.algo is not None:
            if params.algo == self.algorithm:
                return 0
            for prio in sorted(self.recomp):
                if self.recomp[prio] == params.algo:
                    return prio
            raise ControlError(
                errno.EINVAL, f"algo={params.algo} is not selected at any priority"
            )
        prio = 0 if params.priority is None else params.priority
        if not 0 <= prio <= MAX_PRIORITY:
            raise ControlError(errno.EINVAL, f"priority {prio} is not in 0..{MAX_PRIORITY}")
        return prio

    def _store_mem_limit(self, text: str) -> None:
        value, used = _memparse(text)
        if not used:  # as mem_limit_store(): nothing parsed is EINVAL, a rest is ignored
            raise ControlError(errno.EINVAL, f"mem_limit {text!r}: not a size")
        limit = -(-value // PAGE_SIZE) * PAGE_SIZE
        # fix (tests/test_reliability_faults.py fuzz): a value in the last page below 2**64
        # rounded up to 2**64, which the stats file and `zramfs status` cannot print (EIO,
        # a traceback).  The kernel's PAGE_ALIGN wraps it to 0; refuse it instead.
        if limit >= 1 << 64:
            raise ControlError(errno.EINVAL, f"mem_limit {text!r} is out of range")
        self.mem_limit = limit
        if self.store is not None:
            self.store.mem_limit = limit

    def _store_mem_used_max(self, text: str) -> None:
        if _kstrtoul(text) != 0:
            raise ControlError(errno.EINVAL, "mem_used_max only takes 0")
        if self.store is not None:
            self.store.reset_mem_used_max()

    def _store_compact(self, text: str) -> None:
        self._require_initialised("compact").compact()

    def _store_idle(self, text: str) -> None:
        text = text.strip()
        if text == "all":
            age: float | None = None
        else:
            age = float(_kstrtoul(text))
        self._require_initialised("idle").mark_idle(age)

    # -- the writeback and recompression tier --------------------------------------------

    def _writeback_limit(self) -> int:
        return self.store.writeback_limit if self.store is not None else self._wb_limit

    def _show_bd_stat(self) -> str:
        s = self.store.statistics() if self.store is not None else None
        if s is None:
            return "%8d %8d %8d\n" % (0, 0, 0)
        return "%8d %8d %8d\n" % (s.bd_count, s.bd_reads, s.bd_writes)

    def _show_recomp_algorithm(self) -> str:
        lines = []
        for prio in sorted(self.recomp):
            chosen = self.recomp[prio]
            names = (f"[{a}]" if a == chosen else a for a in ALGORITHMS)
            lines.append(f"#{prio}: " + " ".join(names) + " \n")
        return "".join(lines)

    def _store_backing_dev(self, text: str) -> None:
        # backing_dev_store(): EBUSY once initialised, then the open's own errno. The mount
        # opens the file on a worker thread instead (prepare_backing_dev, set_backing).
        self._require_uninitialised("backing_dev")
        if self._open_backing is None:
            raise ControlError(errno.EOPNOTSUPP, "this zramfs has no backing-store support")
        try:
            backing = self._open_backing(text)
        except OSError as exc:
            raise ControlError(exc.errno or errno.EINVAL, f"backing_dev {text!r}: {exc}") from None
        self.set_backing(backing)

    def prepare_backing_dev(self, data: bytes) -> str:
        """Check a backing_dev write as far as it can be without opening the path (EBUSY
        once initialised) and return the path (a trailing newline dropped)."""
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        self._require_uninitialised("backing_dev")
        return _text(data)

    def set_backing(self, backing: BackingStore) -> None:
        """Take an opened backing store (closing the one before, as reset_bdev does); EBUSY
        and ``backing`` closed if the device was initialised meanwhile."""
        if self.store is not None or self.removed:
            backing.close()
            raise ControlError(errno.EBUSY, f"backing_dev: {self.name} is initialised")
        old, self.backing = self.backing, backing
        if old is not None:
            old.close()

    def parse_writeback(self, data: bytes) -> WritebackRequest:
        """Validate a write to `writeback` as writeback_store() does, before anything
        moves: EINVAL if not initialised, ENODEV without a backing store, then the
        arguments (EINVAL for a bad mode or number, ERANGE for an index out of range)."""
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        store = self._require_initialised("writeback")
        if self.backing is None:
            raise ControlError(errno.ENODEV, f"{self.name} has no backing_dev")
        nr_pages = store.disksize // PAGE_SIZE
        lo, hi, mode = 0, nr_pages, 0
        scans: list[tuple[int, int, int]] = []
        for param, val in _args(_raw_text(data)):
            if not val:  # the legacy form: a bare mode
                scans.append((_writeback_mode(param), lo, hi))
                break
            if param == "type":
                mode = _writeback_mode(val)
                scans.append((mode, lo, hi))
                break
            if param == "page_index":
                lo = _kstrtoul(val)
                if lo >= nr_pages:
                    raise ControlError(errno.ERANGE, f"page_index {lo} is past the device")
                hi = lo + 1
                scans.append((mode, lo, hi))
            elif param == "page_indexes":
                first, sep, last = val.partition("-")
                if not sep:
                    raise ControlError(errno.EINVAL, f"page_indexes {val!r}: not LO-HI")
                lo = _kstrtoul(first)
                if lo >= nr_pages:
                    raise ControlError(errno.ERANGE, f"page_indexes: {lo} is past the device")
                end = _kstrtoul(last)
                if end >= nr_pages or lo > end:
                    raise ControlError(errno.ERANGE, f"page_indexes {val!r}: bad range")
                hi = end + 1
                scans.append((mode, lo, hi))
            # other keys are ignored, as by the kernel
        return WritebackRequest(tuple(scans))

    def _store_writeback(self, text: str) -> None:
        # The shell runs writebacks (their I/O is on worker threads): parse_writeback and
        # zramfs.tier. Reaching this means a caller without the shell.
        self.parse_writeback(text.encode())
        raise ControlError(errno.EOPNOTSUPP, "writeback needs the zramfs shell")

    def _store_writeback_limit_enable(self, text: str) -> None:
        value = _kstrtoull(text)
        self.writeback_limit_enable = bool(value)
        if self.store is not None:
            self.store.writeback_limit_enable = bool(value)

    def _store_writeback_limit(self, text: str) -> None:
        value = _kstrtoull(text)
        self._wb_limit = value
        if self.store is not None:
            self.store.writeback_limit = value

    def _store_recomp_algorithm(self, text: str) -> None:
        # recomp_algorithm_store(): key=value pairs, algo= required, priority 1..3, then
        # the algorithm must exist (EINVAL) and the device be uninitialised (EBUSY).
        prio = 1
        algo = None
        for param, val in _args(text):
            if not val:
                raise ControlError(errno.EINVAL, f"recomp_algorithm: {param} needs a value")
            if param == "algo":
                algo = val
            elif param == "priority":
                prio = _kstrtoint(val)
        if algo is None:
            raise ControlError(errno.EINVAL, "recomp_algorithm needs algo=NAME")
        if not 1 <= prio <= MAX_PRIORITY:
            raise ControlError(errno.EINVAL, f"recompression priorities are 1..{MAX_PRIORITY}")
        if len(algo) >= 128:  # __comp_algorithm_store(): CRYPTO_MAX_ALG_NAME
            raise ControlError(errno.E2BIG, "recomp_algorithm: name too long")
        if algo not in ALGORITHMS:
            raise ControlError(errno.EINVAL, f"unknown algorithm {algo!r}")
        self._require_uninitialised("recomp_algorithm")
        self.recomp[prio] = algo

    def _recomp_codec(self, prio: int) -> Codec:
        algorithm = self.recomp[prio]
        p = self.recomp_params.get(prio)
        if p is not None and p.algo is not None and p.algo != algorithm:
            p = None  # parameters given for another algorithm at this priority
        return _build_codec(algorithm, p, self.recomp_dictionaries.get(prio))

    def parse_recompress(self, data: bytes) -> RecompressRequest:
        """Validate a write to `recompress` as recompress_store() does (the shell runs it
        in batches)."""
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        return self._resolve_recompress(_raw_text(data), self._require_initialised("recompress"))

    def policy_recompress(self) -> RecompressRequest | None:
        """The background policy's recompression pass: recompress_params (the `recompress`
        syntax; empty: every page, all the algorithms), or None if it names nothing that
        the device has."""
        store = self.store
        if store is None or not store.recompression_priorities:
            return None
        try:
            return self._resolve_recompress(self.recompress_params, store)
        except ControlError:
            return None

    def _resolve_recompress(self, text: str, store: PageStore) -> RecompressRequest:
        mode, threshold, max_pages, prio, prio_max, algo = self._recompress_args(text)
        if algo is not None:
            found = [p for p in range(prio, MAX_PRIORITY + 1) if self.recomp.get(p) == algo]
            if not found:
                raise ControlError(errno.EINVAL, f"recompress: no priority uses {algo!r}")
            prio_max = found[0] + 1
        active = max(store.recompression_priorities, default=0) + 1
        prio_max = min(prio_max, active)
        if prio >= prio_max:
            raise ControlError(errno.EINVAL, "recompress: no recompression algorithm to use")
        return RecompressRequest(mode, threshold, max_pages, prio, prio_max)

    @staticmethod
    def _recompress_args(text: str) -> tuple[int, int, int | None, int, int, str | None]:
        """(mode, threshold, max_pages, prio, prio_max, algo) of recompress arguments."""
        mode = threshold = 0
        max_pages: int | None = None
        prio = 1
        prio_max = MAX_PRIORITY + 1
        algo = None
        for param, val in _args(text):
            if not val:
                raise ControlError(errno.EINVAL, f"recompress: {param} needs a value")
            if param == "type":
                modes = {"idle": WB_IDLE, "huge": WB_HUGE, "huge_idle": WB_IDLE | WB_HUGE}
                if val not in modes:
                    raise ControlError(errno.EINVAL, f"recompress: unknown type {val!r}")
                mode = modes[val]
            elif param == "max_pages":
                max_pages = _kstrtoull(val)
            elif param == "threshold":
                threshold = _kstrtoull(val)
                if threshold >= 1 << 32:
                    raise ControlError(errno.ERANGE, f"threshold {val!r} is out of range")
            elif param == "algo":
                algo = val
            elif param == "priority":
                prio = _kstrtoull(val)
                if prio >= 1 << 32:
                    raise ControlError(errno.ERANGE, f"priority {val!r} is out of range")
                prio = max(prio, 1)  # 0 is the primary: start at the first secondary
                prio_max = prio + 1
        if threshold >= HUGE_CLASS_SIZE:
            raise ControlError(errno.EINVAL, f"threshold {threshold} is not below the huge size")
        return mode, threshold, max_pages, prio, prio_max, algo

    def _store_recompress(self, text: str) -> None:
        # The shell runs recompressions in batches (zramfs.tier); validate and refuse here.
        self.parse_recompress(text.encode())
        raise ControlError(errno.EOPNOTSUPP, "recompress needs the zramfs shell")

    def _store_auto_writeback(self, text: str) -> None:
        value = _kstrtoul(text)
        if value > 100:
            raise ControlError(errno.EINVAL, "auto_writeback is a percentage (0-100)")
        self._auto_writeback = value

    def _store_auto_compact(self, text: str) -> None:
        value = _kstrtoul(text)
        if value > 100:
            raise ControlError(errno.EINVAL, "auto_compact is a percentage (0-100)")
        self.auto_compact = value

    def _store_recompress_params(self, text: str) -> None:
        """What the background policy's recompression takes: `recompress`'s parameters
        (type=idle|huge|huge_idle, threshold=, max_pages=, algo=, priority=), checked as a
        write to `recompress` would be, but only remembered; an empty write clears them.
        The policy still only considers pages idle for recompress_after seconds."""
        text = " ".join(text.split())
        for param in text.split():
            key = param.split("=", 1)[0]
            if key not in ("type", "threshold", "max_pages", "algo", "priority"):
                raise ControlError(errno.EINVAL, f"recompress_params: unknown {key}=")
        if text:
            self.parse_recompress(text.encode())
        self.recompress_params = text

    def _store_seconds(self, attr: str, text: str) -> None:
        value = _kstrtoul(text)
        if value >= 1 << 32:
            raise ControlError(errno.ERANGE, f"{attr}: {value} seconds is too long")
        setattr(self, attr, value)


def _args(text: str) -> list[tuple[str, str | None]]:
    """Split ``key=value`` words as the kernel's next_arg (codecs.split_args, which also
    cuts algorithm_params): a word without '=' has no value; double quotes group."""
    return split_args(text)


def _writeback_mode(name: str) -> int:
    modes = {
        "idle": WB_IDLE,
        "huge": WB_HUGE,
        "huge_idle": WB_IDLE | WB_HUGE,
        "incompressible": WB_INCOMPRESSIBLE,
    }
    if name not in modes:
        raise ControlError(errno.EINVAL, f"writeback: unknown mode {name!r}")
    return modes[name]


def _kstrtoull(text: str) -> int:
    """kstrtoull(buf, 10): as _kstrtoul (64 bits)."""
    return _kstrtoul(text)


class DeviceTable:
    """The set of devices, as /sys/class/zram-control manages them."""

    def __init__(self, open_backing: OpenBacking | None = None) -> None:
        self._devices: dict[int, ZramDevice] = {}
        self._open_backing = open_backing  # how backing_dev opens a path (None: refused)

    def __iter__(self) -> Iterator[ZramDevice]:
        return iter(sorted(self._devices.values(), key=lambda d: d.dev_id))

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, dev_id: int) -> ZramDevice | None:
        return self._devices.get(dev_id)

    def hot_add(self) -> ZramDevice:
        """Create the device with the lowest free id, as the kernel's idr_alloc does."""
        dev_id = 0
        while dev_id in self._devices:
            dev_id += 1
        device = self._devices[dev_id] = ZramDevice(dev_id, self._open_backing)
        return device

    def hot_remove(self, data: bytes) -> ZramDevice:
        """Remove the device whose id is written; ENODEV unknown, EBUSY open."""
        dev_id = _kstrtoint(_raw_text(data))  # as hot_remove_store(), so "-0" is 0
        if dev_id < 0:
            raise ControlError(errno.EINVAL, f"no device id is negative: {dev_id}")
        device = self._devices.get(dev_id)
        if device is None:
            raise ControlError(errno.ENODEV, f"no device zram{dev_id}")
        if device.open_count or device.busy:  # (busy: a writeback or recompression runs)
            raise ControlError(errno.EBUSY, f"zram{dev_id} is open")
        del self._devices[dev_id]
        device.removed = True
        device.reset()
        return device
