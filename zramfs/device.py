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

from .codecs import (
    ALGORITHMS,
    AlgorithmParams,
    Codec,
    CodecError,
    make_codec,
    parse_algorithm_params,
)
from .pagestore import PAGE_SIZE, PageStore, StoreStatistics
from .sizes import memparse

DEFAULT_ALGORITHM = "lz4"
# sysfs hands a store() at most one page; longer writes are refused outright.
MAX_CONTROL_WRITE = 4096
# The largest disksize the image can show: a file's size is a signed 64-bit off_t
# (FUSE's s_maxbytes is MAX_LFS_FILESIZE, 2**63 - 1), rounded down to a page.
MAX_DISKSIZE = ((1 << 63) - 1) // PAGE_SIZE * PAGE_SIZE


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
    }

    def __init__(self, dev_id: int) -> None:
        self.dev_id = dev_id
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
        }

    def _reset_config(self) -> None:
        self.disksize = 0
        self.algorithm = DEFAULT_ALGORITHM
        self.params: dict[str, AlgorithmParams] = {}
        self.dictionaries: dict[str, bytes] = {}  # algorithm -> its dict= file's bytes
        self.mem_limit = 0

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
        writer(_text(data))

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
        )

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
        if self.store is None:
            return "%8d %8d %8d %8d\n" % (0, 0, 0, 0)
        s = self.store.statistics()
        return "%8d %8d %8d %8d\n" % (s.failed_reads, s.failed_writes, 0, s.notify_free)

    # -- writers: each validates fully before it changes anything ----------------------

    def _require_uninitialised(self, attr: str) -> None:
        if self.store is not None:
            raise ControlError(errno.EBUSY, f"{attr}: {self.name} is initialised; reset it first")

    def _require_initialised(self, attr: str) -> PageStore:
        if self.store is None:
            raise ControlError(errno.EINVAL, f"{attr}: {self.name} is not initialised")
        return self.store

    def _codec(self, algorithm: str) -> Codec:
        p = self.params.get(algorithm)
        try:
            if p is None:
                return make_codec(algorithm)
            return make_codec(
                algorithm,
                level=p.level,
                dict_path=p.dict_path,
                dictionary=self.dictionaries.get(algorithm),
            )
        except CodecError as exc:
            raise ControlError(errno.EINVAL, str(exc)) from None

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
        self.store = PageStore(size, codec, mem_limit=self.mem_limit)
        self.disksize = size

    def _store_reset(self, text: str) -> None:
        if _kstrtoul(text) == 0:
            raise ControlError(errno.EINVAL, "reset takes a non-zero number")
        if self.open_count:
            raise ControlError(errno.EBUSY, f"{self.name} is open ({self.open_count} opens)")
        self.reset()

    def reset(self) -> None:
        """Free every page and go back to the uninitialised defaults (no checks)."""
        store, self.store = self.store, None
        if store is not None:
            store.close()
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
        except CodecError as exc:
            raise ControlError(errno.EINVAL, str(exc)) from None
        if params.priority not in (None, 0):
            raise ControlError(errno.EINVAL, "recompression (priority > 0) is not supported")
        algo = params.algo or self.algorithm
        if algo != self.algorithm:
            # As the kernel: algo= names the algorithm a priority already uses, so select
            # it through comp_algorithm first.
            raise ControlError(
                errno.EINVAL, f"algo={algo} is not the selected algorithm ({self.algorithm})"
            )
        self._require_uninitialised("algorithm_params")
        return params

    def apply_algorithm_params(self, params: AlgorithmParams, dictionary: bytes | None) -> None:
        """Check ``params`` (from prepare_algorithm_params, with ``dictionary`` the bytes of
        its dict= file) against the device as it is now, and take them."""
        if self.removed:
            raise ControlError(errno.ENODEV, f"{self.name} was removed")
        algo = params.algo or self.algorithm
        if algo != self.algorithm:  # comp_algorithm changed while the file was read
            raise ControlError(
                errno.EINVAL, f"algo={algo} is not the selected algorithm ({self.algorithm})"
            )
        self._require_uninitialised("algorithm_params")
        if params.dict_path is not None and dictionary is None:
            raise ControlError(errno.EINVAL, f"dictionary {params.dict_path!r} was not read")
        try:  # validate now (level range, dictionary usable), not at disksize time
            make_codec(algo, level=params.level, dict_path=params.dict_path, dictionary=dictionary)
        except CodecError as exc:
            raise ControlError(errno.EINVAL, str(exc)) from None
        self.params[algo] = params
        if dictionary is None:
            self.dictionaries.pop(algo, None)
        else:
            self.dictionaries[algo] = dictionary

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


class DeviceTable:
    """The set of devices, as /sys/class/zram-control manages them."""

    def __init__(self) -> None:
        self._devices: dict[int, ZramDevice] = {}

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
        device = self._devices[dev_id] = ZramDevice(dev_id)
        return device

    def hot_remove(self, data: bytes) -> ZramDevice:
        """Remove the device whose id is written; ENODEV unknown, EBUSY open."""
        dev_id = _kstrtoint(_raw_text(data))  # as hot_remove_store(), so "-0" is 0
        if dev_id < 0:
            raise ControlError(errno.EINVAL, f"no device id is negative: {dev_id}")
        device = self._devices.get(dev_id)
        if device is None:
            raise ControlError(errno.ENODEV, f"no device zram{dev_id}")
        if device.open_count:
            raise ControlError(errno.EBUSY, f"zram{dev_id} is open")
        del self._devices[dev_id]
        device.removed = True
        device.reset()
        return device
