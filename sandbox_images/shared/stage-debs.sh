#!/bin/sh
# Installs the .deb files next to this script, run as root in a throw-away build stage, and copies
# every file the installation created or changed (programs, libraries, the dpkg database, the
# linker cache) into the folder given as $1. The image's last stage COPYs that folder onto its
# root, so neither the .deb files nor dpkg's logs and backups end up in any layer of the image.
set -eu

here=$(dirname "$0")
staging=$1

mkdir "$staging"
# dpkg gives unpacked files the modification times recorded in the packages, so the files it
# adds are found by their change time (ctime) instead, which a process cannot set.
touch /tmp/before-install
sleep 1

# With nothing to install (the base has every package already) the pattern matches no file.
set -- "$here"/*.deb
if [ -e "$1" ]; then
    dpkg --install "$@"
fi
# No setuid or setgid program may reach the image: a package that ships one loses the bits here,
# as the base image's own programs did.
find / -xdev -type f -perm /6000 -exec chmod ug-s {} +

# Left out: dpkg's log, files named *-old (dpkg's backups), caches and the build's own temporary files.
find / -xdev -mindepth 1 \
    \( -path /tmp -o -path /proc -o -path /sys -o -path /dev -o -path /run -o -path "$staging" \
       -o -path /var/log -o -path /var/cache -o -name '*-old' \) -prune \
    -o -cnewer /tmp/before-install -print > /tmp/changed
tar --create --no-recursion --files-from /tmp/changed 2>/dev/null | tar --extract --preserve-permissions --directory "$staging"

if [ -n "$(find "$staging" -perm /6000)" ]; then
    echo "stage-debs: setuid or setgid files remain in $staging" >&2
    exit 1
fi
echo "stage-debs: $(wc -l < /tmp/changed) paths staged"
