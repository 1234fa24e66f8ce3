"""The boot-time configuration: zram-generator's format, read and evaluated, pure.

`/etc/zramfs/zramfs.conf` and the drop-ins `/etc/zramfs/zramfs.conf.d/*.conf` (lexical
order, a later file's key overriding an earlier one's) hold one `[zramN]` section per device
with zram-generator's keys and meanings (zram-size and zram-resident-limit are arithmetic
over `ram`, MemTotal in MiB; compression-algorithm lists the primary algorithm and the
recompression ones with their parameters; swap-priority, fs-type, mount-point, options,
writeback-device), zramfs's own keys for its background policy (auto-writeback,
policy-interval, recompress-after, writeback-after, auto-compact) and a `[zramfs]` section
for the daemon (mount).  Everything is parsed and evaluated here, before anything is brought
up, and any problem raises ConfigError naming the file, the line and what is wrong.  The
result is a Config whose DeviceConfig values say which control files get which values, in
the order the kernel needs them.  Arithmetic has its own small parser: nothing is eval()ed.
Apart from reading the files it is given (and listing the drop-in directory), no I/O.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_PATH = "/etc/zramfs/zramfs.conf"
DEFAULT_MOUNT = "/mnt/zramfs"
DEFAULT_ZRAM_SIZE = "min(ram / 2, 4096)"
DEFAULT_RESIDENT_LIMIT = "0"
DEFAULT_SWAP_PRIORITY = 100
DEFAULT_OPTIONS = "discard"
MIB = 1 << 20
PAGE_SIZE = 4096
MAX_DEVICE_ID = 254  # `zramfs mount -n` takes at most 255 devices

# zramfs's own keys: config key -> control file, and the largest value each takes.
POLICY_KEYS: dict[str, tuple[str, int]] = {
    "auto-writeback": ("auto_writeback", 100),
    "policy-interval": ("policy_interval", 1 << 32),
    "recompress-after": ("recompress_after", 1 << 32),
    "writeback-after": ("writeback_after", 1 << 32),
    "auto-compact": ("auto_compact", 100),
}
# Where the global recompression conditions of compression-algorithm (a parenthesised list
# without an algorithm, e.g. "(type=idle)") go: the parameters the background policy uses
# for its recompression passes, in the kernel's `recompress` syntax.
RECOMPRESS_CONDITIONS_FILE = "recompress_params"
RECOMPRESS_KEYS = ("type", "threshold", "max_pages", "algo", "priority")
RECOMPRESS_TYPES = ("idle", "huge", "huge_idle")
ALGORITHM_PARAM_KEYS = ("level", "dict")
# The configuration key behind each control file start writes, so that a value the running
# zramfs refuses is reported at the file and line that set it.
CONTROL_KEYS: dict[str, str] = {
    "comp_algorithm": "compression-algorithm",
    "algorithm_params": "compression-algorithm",
    "recomp_algorithm": "compression-algorithm",
    RECOMPRESS_CONDITIONS_FILE: "compression-algorithm",
    "backing_dev": "writeback-device",
    "mem_limit": "zram-resident-limit",
    "disksize": "zram-size",
    **{control: key for key, (control, _) in POLICY_KEYS.items()},
}
DEVICE_KEYS = (
    "zram-size",
    "zram-resident-limit",
    "compression-algorithm",
    "writeback-device",
    "swap-priority",
    "fs-type",
    "mount-point",
    "options",
    "host-memory-limit",
    "memory-limit",
    "zram-fraction",
    "max-zram-size",
    *POLICY_KEYS,
)
DAEMON_KEYS = ("mount",)


class ConfigError(ValueError):
    """A configuration problem: `path:line: message` (line 0 when it is about a whole file)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Setting:
    """One `key = value` line, and where it was read."""

    value: str
    path: str
    line: int

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.path, self.line, message)


@dataclass(frozen=True)
class Algorithm:
    """One entry of compression-algorithm: a name and its parameters ("level=3", ...)."""

    name: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceConfig:
    """One [zramN] section, evaluated: what the device becomes and how it is used."""

    name: str
    dev_id: int
    disksize: int  # bytes; 0 means the device is not created (zram-generator's rule)
    mem_limit: int  # bytes; 0: none
    algorithms: tuple[Algorithm, ...]  # the first is primary, later ones recompress
    recompress_conditions: tuple[str, ...]  # global recompression parameters
    writeback_device: str | None
    swap_priority: int
    fs_type: str  # "swap" or a filesystem type (mkfs.TYPE)
    mount_point: str | None
    options: str
    policy: tuple[tuple[str, int], ...]  # (control file, value) for zramfs's own keys
    # (key, "path:line", value) of every key the files set for this device
    origins: tuple[tuple[str, str, str], ...] = ()

    @property
    def is_swap(self) -> bool:
        return self.fs_type == "swap"

    def where(self, key: str) -> str:
        """`path:line: key=value: ` for the setting behind a key or a control file, or ""
        when the value is a default (no line to name)."""
        key = CONTROL_KEYS.get(key, key)
        for name, location, value in self.origins:
            if name == key:
                return f"{location}: {name}={value!r}: "
        return ""

    def control_writes(self) -> list[tuple[str, str]]:
        """(control file, value) in the order the device needs them.

        Everything the kernel only takes before initialisation (algorithms, their
        parameters, backing_dev) comes first, then mem_limit, then disksize, which
        initialises the device, then the policy files and the recompression conditions.
        """
        writes: list[tuple[str, str]] = []
        if self.algorithms:
            primary = self.algorithms[0]
            writes.append(("comp_algorithm", primary.name))
            if primary.params:
                writes.append(("algorithm_params", " ".join((f"algo={primary.name}",
                                                             *primary.params))))
            for prio, algo in enumerate(self.algorithms[1:], start=1):
                writes.append(("recomp_algorithm", f"algo={algo.name} priority={prio}"))
                if algo.params:
                    writes.append(("algorithm_params", " ".join((f"priority={prio}",
                                                                 *algo.params))))
        if self.writeback_device is not None:
            writes.append(("backing_dev", self.writeback_device))
        writes.append(("mem_limit", str(self.mem_limit)))
        writes.append(("disksize", str(self.disksize)))
        writes.extend((name, str(value)) for name, value in self.policy)
        if self.recompress_conditions:
            writes.append((RECOMPRESS_CONDITIONS_FILE, " ".join(self.recompress_conditions)))
        return writes


@dataclass(frozen=True)
class Config:
    """The whole configuration: where the daemon mounts and the devices it serves."""

    mount: str
    devices: tuple[DeviceConfig, ...]
    files: tuple[str, ...]

    @property
    def device_count(self) -> int:
        """Devices the mount needs: ids run 0..max, gaps are removed after mounting."""
        return max((d.dev_id for d in self.devices), default=-1) + 1


# -- files -------------------------------------------------------------------------------


def config_files(path: str | None = None) -> list[str]:
    """The main file (if it exists) then PATH.d/*.conf in lexical order."""
    main = path or DEFAULT_PATH
    files = [main] if os.path.exists(main) else []
    drop_dir = main + ".d"
    try:
        names = sorted(n for n in os.listdir(drop_dir) if n.endswith(".conf"))
    except FileNotFoundError:
        names = []
    except NotADirectoryError:
        raise ConfigError(drop_dir, 0, "is not a directory") from None
    files += [os.path.join(drop_dir, n) for n in names]
    return files


def load(path: str | None, ram_mib: int) -> Config:
    """Read and evaluate the configuration at `path` (or the default location)."""
    texts = []
    for file in config_files(path):
        try:
            with open(file, encoding="utf-8") as f:
                texts.append((file, f.read()))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, 0, f"cannot read: {exc}") from None
    if path is not None and not texts:
        raise ConfigError(path, 0, f"no such file, and no {path}.d/*.conf")
    return evaluate(texts, ram_mib)


SECTION_RE = re.compile(r"\[([^\]]*)\]")
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def parse_ini(path: str, text: str) -> dict[str, dict[str, Setting]]:
    """systemd.syntax(5)-style INI: [section], key = value, # and ; comments, \\ joins."""
    sections: dict[str, dict[str, Setting]] = {}
    current: dict[str, Setting] | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            m = SECTION_RE.fullmatch(line)
            if m is None:
                raise ConfigError(path, lineno, f"malformed section header {line!r}")
            name = m.group(1).strip()
            if name == "zramfs":
                pass
            elif name.startswith("zram") and name[4:].isdigit() and name[4:].isascii():
                if int(name[4:]) > MAX_DEVICE_ID:
                    raise ConfigError(path, lineno, f"[{name}]: device ids go up to "
                                                    f"{MAX_DEVICE_ID}")
                name = f"zram{int(name[4:])}"
            else:
                raise ConfigError(path, lineno, f"unknown section [{name}]: expected [zramN] "
                                                "or [zramfs]")
            current = sections.setdefault(name, {})
            continue
        if line.startswith("set!"):
            raise ConfigError(path, lineno, "set! directives are not supported (zramfs runs "
                                            "no programs from its configuration)")
        if "=" not in line:
            raise ConfigError(path, lineno, f"expected 'key = value', got {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if not KEY_RE.fullmatch(key):
            raise ConfigError(path, lineno, f"invalid key {key!r}")
        if current is None:
            raise ConfigError(path, lineno, f"{key}= outside any section: put it under "
                                            "[zramN] or [zramfs]")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        current[key] = Setting(value, path, lineno)
    return sections


def evaluate(texts: Sequence[tuple[str, str]], ram_mib: int) -> Config:
    """Merge the files in order (later keys override earlier ones) and evaluate them."""
    merged: dict[str, dict[str, Setting]] = {}
    for path, text in texts:
        for section, keys in parse_ini(path, text).items():
            merged.setdefault(section, {}).update(keys)
    daemon = merged.pop("zramfs", {})
    for key, s in daemon.items():
        if key not in DAEMON_KEYS:
            raise s.error(f"unknown key {key}= in [zramfs]; known: {', '.join(DAEMON_KEYS)}")
    mount = DEFAULT_MOUNT
    if "mount" in daemon:
        mount = _absolute_path(daemon["mount"], "mount")
    devices = []
    for name in sorted(merged, key=lambda n: int(n[4:])):
        device = _device(name, merged[name], ram_mib)
        if device is not None:
            devices.append(device)
    _check_unique_mount_points(devices, merged)
    return Config(mount=mount, devices=tuple(devices), files=tuple(p for p, _ in texts))


def _check_unique_mount_points(devices: list[DeviceConfig],
                               merged: dict[str, dict[str, Setting]]) -> None:
    seen: dict[str, str] = {}
    for d in devices:
        if d.mount_point is None:
            continue
        if d.mount_point in seen:
            raise merged[d.name]["mount-point"].error(
                f"mount-point {d.mount_point} is also {seen[d.mount_point]}'s")
        seen[d.mount_point] = d.name


# -- one device --------------------------------------------------------------------------


def _device(name: str, keys: dict[str, Setting], ram_mib: int) -> DeviceConfig | None:
    for key, s in keys.items():
        if key not in DEVICE_KEYS:
            raise s.error(f"unknown key {key}= in [{name}]; known: {', '.join(DEVICE_KEYS)}")
    host_limit = keys.get("host-memory-limit") or keys.get("memory-limit")
    if host_limit is not None and host_limit.value != "none":
        limit = _integer(host_limit, "host-memory-limit", 0, 1 << 53)
        if ram_mib > limit:
            return None  # zram-generator: too much RAM for this device, it is not created
    fraction = keys.get("zram-fraction")
    max_size = keys.get("max-zram-size")
    if fraction is not None or max_size is not None:  # the deprecated pair overrides zram-size
        factor = 0.5 if fraction is None else _float(fraction, "zram-fraction")
        cap = math.inf
        if max_size is not None and max_size.value != "none":
            cap = _integer(max_size, "max-zram-size", 0, 1 << 53)
        disksize = int(min(int(factor * ram_mib), cap)) * MIB
    else:
        disksize = _mib_expression(keys.get("zram-size"), DEFAULT_ZRAM_SIZE, ram_mib,
                                   "zram-size")
    if disksize == 0:
        return None  # zram-generator discards devices whose size comes out 0
    mem_limit = _mib_expression(keys.get("zram-resident-limit"), DEFAULT_RESIDENT_LIMIT,
                                ram_mib, "zram-resident-limit")
    algorithms: tuple[Algorithm, ...] = ()
    conditions: tuple[str, ...] = ()
    if "compression-algorithm" in keys:
        algorithms, conditions = parse_compression_algorithm(keys["compression-algorithm"])
    writeback = None
    if "writeback-device" in keys and keys["writeback-device"].value:
        writeback = _absolute_path(keys["writeback-device"], "writeback-device")
    priority = DEFAULT_SWAP_PRIORITY
    if "swap-priority" in keys:
        priority = _integer(keys["swap-priority"], "swap-priority", -1, 32767)
    mount_point = None
    if "mount-point" in keys:
        mount_point = _absolute_path(keys["mount-point"], "mount-point")
    if "fs-type" in keys:
        fs_type = keys["fs-type"].value
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", fs_type):
            raise keys["fs-type"].error(f"invalid fs-type {fs_type!r}")
    else:
        fs_type = "swap" if mount_point is None else "ext2"  # zram-generator's defaults
    if fs_type == "swap" and mount_point is not None:
        raise keys["mount-point"].error("mount-point is set but fs-type is swap")
    options = keys["options"].value if "options" in keys else DEFAULT_OPTIONS
    if fs_type == "swap" and options:
        _swap_options(keys["options"] if "options" in keys else None, options)
    policy = tuple((control, _integer(keys[key], key, 0, top))
                   for key, (control, top) in POLICY_KEYS.items() if key in keys)
    return DeviceConfig(
        name=name,
        dev_id=int(name[4:]),
        disksize=disksize,
        mem_limit=mem_limit,
        algorithms=algorithms,
        recompress_conditions=conditions,
        writeback_device=writeback,
        swap_priority=priority,
        fs_type=fs_type,
        mount_point=mount_point,
        options=options,
        policy=policy,
        origins=tuple((k, f"{v.path}:{v.line}", v.value) for k, v in keys.items()),
    )


def swap_flags(options: str) -> list[str]:
    """swapon arguments for a swap device's options (discard[=policy], and -o for the rest)."""
    flags: list[str] = []
    rest = []
    for opt in (o.strip() for o in options.split(",")):
        if not opt:
            continue
        if opt == "discard":
            flags.append("--discard")
        elif opt.startswith("discard="):
            flags.append(f"--discard={opt.split('=', 1)[1]}")
        else:
            rest.append(opt)
    if rest:
        flags += ["-o", ",".join(rest)]
    return flags


def _swap_options(setting: Setting | None, options: str) -> None:
    for opt in (o.strip() for o in options.split(",")):
        if opt.startswith("discard=") and opt.split("=", 1)[1] not in ("once", "pages"):
            message = f"swap option {opt!r}: discard takes once or pages"
            if setting is None:
                raise ConfigError("(default)", 0, message)
            raise setting.error(message)


def _absolute_path(s: Setting, key: str) -> str:
    path = s.value
    if not path.startswith("/"):
        raise s.error(f"{key}={path!r} is not an absolute path")
    if any(part == ".." for part in path.split("/")):
        raise s.error(f"{key}={path!r} is not normalised (contains ..)")
    return os.path.normpath(path)


def _integer(s: Setting, key: str, low: int, high: int) -> int:
    text = s.value
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise s.error(f"{key}={text!r} is not an integer")
    value = int(text)
    if not low <= value <= high:
        raise s.error(f"{key}={value} is out of range {low}..{high}")
    return value


def _float(s: Setting, key: str) -> float:
    try:
        value = float(s.value)
    except ValueError:
        raise s.error(f"{key}={s.value!r} is not a number") from None
    if not value >= 0 or math.isinf(value):
        raise s.error(f"{key}={s.value!r} must be a finite number >= 0")
    return value


def _mib_expression(s: Setting | None, default: str, ram_mib: int, key: str) -> int:
    """Evaluate a size expression in MiB; the result in bytes (truncated, as zram-generator)."""
    text = default if s is None else s.value
    try:
        value = evaluate_expression(text, {"ram": float(ram_mib)})
    except ExpressionError as exc:
        if s is None:
            raise
        raise s.error(f"{key}={text!r}: {exc}") from None
    if value < 0:
        assert s is not None
        raise s.error(f"{key}={text!r} is {value:g} MiB, below 0")
    if value * MIB >= 1 << 63:
        assert s is not None
        raise s.error(f"{key}={text!r} is {value:g} MiB, too large")
    return int(value * MIB)


def parse_compression_algorithm(s: Setting) -> tuple[tuple[Algorithm, ...], tuple[str, ...]]:
    """`lz4 zstd(level=3) (type=idle)`: algorithms with parameters, then global conditions.

    Entries are whitespace-separated; parameters are comma-separated in parentheses after
    a name.  A parenthesised list without a name is the global recompression parameters.
    """
    algorithms: list[Algorithm] = []
    conditions: tuple[str, ...] = ()
    for token in _split_entries(s):
        m = re.fullmatch(r"([A-Za-z0-9_-]*)(?:\((.*)\))?", token)
        if m is None:
            raise s.error(f"compression-algorithm: malformed entry {token!r} "
                          "(expected name or name(key=value,...))")
        name, body = m.group(1), m.group(2)
        params = tuple(p.strip() for p in (body or "").split(",") if p.strip())
        for p in params:
            if not re.fullmatch(r"[a-z_]+=\S+", p):
                raise s.error(f"compression-algorithm: parameter {p!r} is not key=value")
        if not name:
            if body is None:
                continue
            for p in params:
                key, value = p.split("=", 1)
                if key not in RECOMPRESS_KEYS:
                    raise s.error(f"compression-algorithm: recompression condition {key}= is "
                                  f"not one of {', '.join(RECOMPRESS_KEYS)}")
                if key == "type" and value not in RECOMPRESS_TYPES:
                    raise s.error(f"compression-algorithm: type={value} is not one of "
                                  f"{', '.join(RECOMPRESS_TYPES)}")
                if key in ("threshold", "max_pages", "priority") and not value.isdigit():
                    raise s.error(f"compression-algorithm: {key}={value} is not a number")
            conditions = params
            continue
        for p in params:
            key = p.split("=", 1)[0]
            if key not in ALGORITHM_PARAM_KEYS:
                raise s.error(f"compression-algorithm: {name} parameter {key}= is not one of "
                              f"{', '.join(ALGORITHM_PARAM_KEYS)}")
        algorithms.append(Algorithm(name, params))
    return tuple(algorithms), conditions


def _split_entries(s: Setting) -> list[str]:
    """Split on whitespace outside parentheses, so `zstd(level=3, dict=/x)` stays whole."""
    out, depth, current = [], 0, ""
    for ch in s.value:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise s.error("compression-algorithm: unbalanced ')'")
        if ch.isspace() and depth == 0:
            if current:
                out.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise s.error("compression-algorithm: unbalanced '('")
    if current:
        out.append(current)
    return out


# -- arithmetic --------------------------------------------------------------------------


class ExpressionError(ValueError):
    """A size expression that does not parse or evaluate."""


TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")
# Called with the arguments spread out: one argument is that value (`min(ram)` is ram).
FUNCTIONS: dict[str, Callable[..., float]] = {"min": lambda *a: min(a), "max": lambda *a: max(a)}


def evaluate_expression(text: str, variables: dict[str, float]) -> float:
    """Evaluate + - * / with parentheses, unary minus, min(...) and max(...) over variables.

    Grammar:  expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := '-' unary | '+' unary | atom ; atom := NUMBER | NAME | NAME '(' expr (',' expr)* ')'
    | '(' expr ')'.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        number, name, op = m.groups()
        if number is not None:
            tokens.append(("num", number))
        elif name is not None:
            tokens.append(("name", name))
        elif op is not None:
            if op not in "+-*/(),":
                raise ExpressionError(f"unexpected {op!r}")
            tokens.append(("op", op))
        pos = m.end()
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens, variables)
    value = parser.expr()
    if parser.i != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.i][1]!r}")
    if math.isnan(value) or math.isinf(value):
        raise ExpressionError("the result is not a finite number")
    return value


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], variables: dict[str, float]) -> None:
        self.tokens = tokens
        self.variables = variables
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.i += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.take(op):
            tok = self.peek()
            raise ExpressionError(f"expected {op!r}, got {tok[1]!r}" if tok else
                                  f"expected {op!r} at the end")

    def expr(self) -> float:
        value = self.term()
        while True:
            if self.take("+"):
                value += self.term()
            elif self.take("-"):
                value -= self.term()
            else:
                return value

    def term(self) -> float:
        value = self.unary()
        while True:
            if self.take("*"):
                value *= self.unary()
            elif self.take("/"):
                divisor = self.unary()
                if divisor == 0:
                    raise ExpressionError("division by zero")
                value /= divisor
            else:
                return value

    def unary(self) -> float:
        if self.take("-"):
            return -self.unary()
        if self.take("+"):
            return self.unary()
        return self.atom()

    def atom(self) -> float:
        tok = self.peek()
        if tok is None:
            raise ExpressionError("unexpected end of expression")
        kind, text = tok
        self.i += 1
        if kind == "num":
            return float(text)
        if kind == "name":
            if text in FUNCTIONS:
                self.expect("(")
                args = [self.expr()]
                while self.take(","):
                    args.append(self.expr())
                self.expect(")")
                return float(FUNCTIONS[text](*args))
            if text in self.variables:
                return self.variables[text]
            known = ", ".join([*self.variables, *(f"{f}()" for f in FUNCTIONS)])
            raise ExpressionError(f"unknown name {text!r} (known: {known})")
        if text == "(":
            value = self.expr()
            self.expect(")")
            return value
        raise ExpressionError(f"unexpected {text!r}")
