"""zramfs: the kernel's zram in user space."""
