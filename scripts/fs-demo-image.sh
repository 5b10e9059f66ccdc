#!/bin/sh
# Makes a filesystem image for `vmm run --object fs=file:IMG --init fs-demo fs`
# (format: guest-kernel/src/fsimage.rs).
#
#   scripts/fs-demo-image.sh IMG                      the demo's image (hello.txt, notes.txt)
#   scripts/fs-demo-image.sh IMG NAME=FILE [...]      an image of those host files
#
# Files go one after the other from the second page, each on a page
# boundary; the image is whole pages. tests/fs_demo.rs checks that this
# script and the Rust builder (fsimage::write_image) agree byte for byte.
set -eu

PAGE=4096

usage() {
	echo "usage: $0 IMG [NAME=FILE ...]" >&2
	exit 2
}

# Little-endian bytes of $1 ($2 of them).
le() {
	n=$1
	i=0
	while [ "$i" -lt "$2" ]; do
		# shellcheck disable=SC2059 # the format is the byte's escape
		printf "\\$(printf '%03o' $((n & 255)))"
		n=$((n >> 8))
		i=$((i + 1))
	done
}

[ $# -ge 1 ] || usage
img=$1
shift

tmp=
# A half-made image never stays behind.
cleanup() {
	rm -f "$img.tmp"
	[ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT

if [ $# -eq 0 ]; then
	# Keep in step with fsimage.rs `demo`.
	tmp=$(mktemp -d)
	line='Hello from the host: a file served through a Mach memory object.'
	i=0
	while [ "$i" -lt 160 ]; do
		printf '%s\n' "$line"
		i=$((i + 1))
	done | head -c 10000 >"$tmp/hello.txt"
	printf '%s\n' "fs-demo (Young et al. 1987, section 4.1): reads are copy-on-write regions." >"$tmp/notes.txt"
	set -- "hello.txt=$tmp/hello.txt" "notes.txt=$tmp/notes.txt"
fi
[ $# -le 64 ] || { echo "$0: at most 64 files" >&2; exit 1; }

# The header page: magic, count, then one 48-byte entry per file.
{
	printf 'DUALFS01'
	le $# 4
	le 0 4
	at=$PAGE
	for spec in "$@"; do
		name=${spec%%=*}
		file=${spec#*=}
		[ "$name" != "$spec" ] || usage
		case $name in
		'' | *[!!-~]*) echo "$0: bad name '$name' (1-32 of ! to ~)" >&2; exit 1 ;;
		esac
		[ ${#name} -le 32 ] || { echo "$0: name '$name' longer than 32" >&2; exit 1; }
		len=$(wc -c <"$file")
		printf '%s' "$name"
		head -c $((32 - ${#name})) /dev/zero
		le "$at" 8
		le "$len" 8
		at=$(((at + len + PAGE - 1) / PAGE * PAGE))
	done
} >"$img.tmp"
truncate -s "$PAGE" "$img.tmp"

# The data, each file on its page.
at=$PAGE
for spec in "$@"; do
	file=${spec#*=}
	len=$(wc -c <"$file")
	dd if="$file" of="$img.tmp" bs="$PAGE" seek=$((at / PAGE)) conv=notrunc status=none
	at=$(((at + len + PAGE - 1) / PAGE * PAGE))
done
truncate -s "$at" "$img.tmp"
mv "$img.tmp" "$img"
echo "$img: $# files, $at bytes"
