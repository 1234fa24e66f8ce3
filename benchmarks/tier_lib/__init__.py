"""Shared pieces of the tier benchmarks (benchmarks/tier_*): memory groups, swap devices on
zramfs and on the kernel's zram, the random-data hog and a sampler of what the kernel says
about them. Every resource is taken inside an ExitStack and released in reverse order."""
