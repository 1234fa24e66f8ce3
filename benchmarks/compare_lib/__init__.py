"""The library behind ``benchmarks/compare``: zramfs against the kernel's zram, nbdkit and tmpfs.

Modules:

- ``system``: commands, sizes, /proc readings, loop devices and best-effort releases.
- ``contenders``: the block devices under test; each one is a context manager that sets the
  device up and releases everything it took, in reverse order, whatever happens.
- ``fio``: the fio jobs and the parsing of fio's JSON output.
- ``kernel_tree``: the real workload (unpack the kernel source onto ext4, read it back).
- ``scaling``: time per GiB as a zramfs device fills, and the daemon's RSS when empty.
- ``report``: the result rows, their ratios, the terminal table, the JSON and the chart.
- ``main``: the command line and the order the phases run in.
"""
