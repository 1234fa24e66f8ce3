# The two commands a new user needs: `make run` and `make test`.
# Both install what is missing (Debian packages, then .venv) and are safe to
# run again: each step checks before it acts.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
MOUNTPOINT  ?= /mnt/zramfs
# fuse3/libfuse3-dev/pkg-config/gcc build pyfuse3 and our fallocate shim, liblz4-dev and
# libzstd-dev our page codec;
# the rest are the tools the three user paths (and the tests) drive for real.
APT_PKGS    := fuse3 libfuse3-dev liblz4-dev libzstd-dev pkg-config gcc util-linux e2fsprogs xfsprogs btrfs-progs fio

.PHONY: run test deps venv lint umount clean install-systemd uninstall-systemd

deps:
	@missing=""; for p in $(APT_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@modprobe fuse 2>/dev/null || true
	@modprobe loop 2>/dev/null || true

$(BIN)/zramfs: pyproject.toml setup.py zramfs/_fallocate.c zramfs/_pagecodec.c | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $@

venv: deps $(BIN)/zramfs

# `make run` also puts `zramfs` on root's PATH (/usr/local/bin/zramfs -> this .venv), as the
# README's commands assume, unless a file that is not a link is already there.
run: venv
	@if [ ! -e /usr/local/bin/zramfs ] || [ -L /usr/local/bin/zramfs ]; then \
	    ln -sfn $(abspath $(BIN))/zramfs /usr/local/bin/zramfs; \
	fi
	@if grep -q " $(MOUNTPOINT) fuse.zramfs " /proc/mounts; then \
	    echo "zramfs is already mounted at $(MOUNTPOINT)"; \
	else \
	    $(BIN)/zramfs mount $(MOUNTPOINT); \
	fi
	@$(BIN)/zramfs status $(MOUNTPOINT)
	@echo
	@echo "Next steps (as root):"
	@echo "  swap:        dev=\$$(losetup -f --show --direct-io=on $(MOUNTPOINT)/zram0/image); mkswap \$$dev; swapon --discard \$$dev"
	@echo "  filesystem:  dev=\$$(losetup -f --show --direct-io=on $(MOUNTPOINT)/zram0/image); mkfs.ext4 \$$dev; mount -o discard \$$dev /mnt/somewhere"
	@echo "  statistics:  cat $(MOUNTPOINT)/zram0/stats"
	@echo "  stop:        zramfs umount $(MOUNTPOINT)"
	@echo "  at boot:     write /etc/zramfs/zramfs.conf, then zramfs start (README: From boot to swap)"

test: venv
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check zramfs tests benchmarks
	$(BIN)/mypy

umount:
	$(BIN)/zramfs umount $(MOUNTPOINT)

# systemd/zramfs.service with ExecStart/ExecStop pointing at this checkout's zramfs,
# enabled so `zramfs start` runs at boot (before swap.target) from /etc/zramfs/zramfs.conf,
# and /usr/local/bin/zramfs linked to it (the unit's own path, and `zramfs` in a shell),
# unless something else is already there.  Safe to run again.  Where systemd is not running
# (a container, a chroot, DESTDIR set) the unit is enabled offline (systemctl --root), for
# the next boot.
DESTDIR     ?=
UNIT_DIR    ?= $(DESTDIR)/etc/systemd/system
LINK_DIR    ?= $(DESTDIR)/usr/local/bin
SYSTEMCTL_ROOT := $(if $(DESTDIR),--root=$(abspath $(DESTDIR)),$(if $(wildcard /run/systemd/system),,--root=/))
install-systemd: venv
	@mkdir -p $(DESTDIR)/etc/zramfs/zramfs.conf.d $(UNIT_DIR) $(LINK_DIR)
	sed 's|/usr/local/bin/zramfs|$(abspath $(BIN))/zramfs|' systemd/zramfs.service > $(UNIT_DIR)/zramfs.service
	@if [ ! -e $(LINK_DIR)/zramfs ] || [ -L $(LINK_DIR)/zramfs ]; then \
	    ln -sfn $(abspath $(BIN))/zramfs $(LINK_DIR)/zramfs; \
	else echo "$(LINK_DIR)/zramfs exists and is not a link: left alone"; fi
	$(if $(SYSTEMCTL_ROOT),,systemctl daemon-reload)
	systemctl $(SYSTEMCTL_ROOT) enable zramfs.service
	@[ -e /etc/zramfs/zramfs.conf ] || echo "now write /etc/zramfs/zramfs.conf (README: From boot to swap), then: systemctl start zramfs"

uninstall-systemd:
	-systemctl $(SYSTEMCTL_ROOT) disable zramfs.service
	rm -f $(UNIT_DIR)/zramfs.service
	@if [ "$$(readlink $(LINK_DIR)/zramfs)" = "$(abspath $(BIN))/zramfs" ]; then rm -f $(LINK_DIR)/zramfs; fi
	$(if $(SYSTEMCTL_ROOT),,systemctl daemon-reload)

clean:
	rm -rf $(VENV) build *.egg-info zramfs/*.so
