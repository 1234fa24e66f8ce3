#!/bin/bash
# RSS of the zramfs daemon over rounds of fill, delete, fstrim and compact on ext4 or btrfs
# (docs/RELIABILITY.md, finding 10). Usage, as root: benchmarks/rss_rounds.sh ext4|btrfs [ROUNDS]
# Uses the repository's .venv/bin/zramfs; scratch space under ${TMPDIR:-/tmp}/zramfs_rss.
set -u
FS=$1; ROUNDS=${2:-8}
ZR="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/zramfs"
W=${TMPDIR:-/tmp}/zramfs_rss
M=$W/mnt-$FS; F=$W/fs-$FS
mkdir -p $W $M $F
[ -f $W/src ] || python3 -c "
import random
r=random.Random(5); words=[bytes(r.choice(b'abcdefghijklmnop') for _ in range(7)) for _ in range(2000)]
with open('$W/src','wb') as f:
    for _ in range(64*256): f.write(b' '.join(r.choice(words) for _ in range(520))[:4096].ljust(4096,b'.'))
"
$ZR mount $M -s 1G >/dev/null
PID=$(cat /run/zramfs/$(echo $M | sed 's|^/||; s|/|-|g').pid)
DEV=$(losetup -f --show --direct-io=on $M/zram0/image)
if [ $FS = ext4 ]; then mkfs.ext4 -q $DEV; else mkfs.btrfs -q -f $DEV >/dev/null; fi
mount $DEV $F
breakdown() {
python3 - $PID <<'PY'
import sys
pid = sys.argv[1]; heap = anon = files = 0; kind = None
for line in open(f"/proc/{pid}/smaps"):
    f = line.split()
    if "-" in f[0] and ":" not in f[0]:  # a mapping's header line
        name = f[5] if len(f) > 5 else ""
        kind = "heap" if name == "[heap]" else ("anon" if not name else "file")
    elif f[0] == "Rss:":
        v = int(f[1])
        if kind == "heap": heap += v
        elif kind == "anon": anon += v
        else: files += v
rss = int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
print(f"VmRSS {rss/1024:.1f} MiB: [heap] {heap/1024:.1f}, other anonymous (pool arenas, arrays) "
      f"{anon/1024:.1f}, file-backed {files/1024:.1f}")
PY
}
echo "$FS start: $(breakdown)"
for r in $(seq 1 $ROUNDS); do
  for i in 1 2 3 4 5; do cp $W/src $F/f$i; done
  sync; echo "$FS round $r filled: $(breakdown)"
  rm -f $F/f*; sync; fstrim $F; echo 1 > $M/zram0/compact
  echo "$FS round $r emptied: $(breakdown); mm_stat $(cat $M/zram0/mm_stat | awk '{print $1, $2, $3}')"
done
umount $F; losetup -d $DEV; $ZR umount $M
