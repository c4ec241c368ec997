#!/bin/sh
# mtlsd-set.sh CONFIG_DIR COMMAND [ARG]: the mtlsd role's file sets.
#
# The files mtlsd reads (mtlsd.toml, inventory.toml, tls/*) live in
# CONFIG_DIR/sets/<id>/; CONFIG_DIR/current is a symbolic link to the live
# set, and each live path (CONFIG_DIR/mtlsd.toml, CONFIG_DIR/tls/host.key,
# ...) is a relative link through it (current/mtlsd.toml,
# ../current/tls/host.key). The role renders the next set into
# CONFIG_DIR/sets/next, checks it, and swaps it in by replacing the one link
# `current` with rename(2): mtlsd, which watches CONFIG_DIR and
# CONFIG_DIR/tls, sees either the whole old set or the whole new one.
#
# Commands (each prints one line for the role):
#   state      "same" when next is what current holds and every live path
#              is its link, else "differs"
#   swap       copies next to sets/<hash of its contents>, makes the live
#              links, points current at the copy; prints the set current
#              pointed at before ("none" on a first install)
#   restage    makes next a copy of the live set (push-inventory.yml
#              stages only the inventory on top of it)
#   check-config
#              writes sets/next-check.toml: next's mtlsd.toml with every
#              path under CONFIG_DIR led into sets/next, for `mtlsd check`
#   restore S  points current back at S (what swap printed)
#   prune      removes sets other than next, current and previous, and
#              live links that no longer lead anywhere
set -eu
dir=$1
cmd=$2
cd "$dir"

# One line per entry of a set: path, owner, group, mode, type, content hash.
manifest() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r f; do
        if [ -f "$f" ] && [ ! -L "$f" ]; then
            h=$(sha256sum <"$f" | cut -c1-64)
        else
            h=-
        fi
        printf '%s %s\n' "$(stat -c '%n %U %G %a %F' "$f")" "$h"
    done)
}

# The live paths of a set's files: mtlsd.toml, inventory.toml, tls/NAME.
files() {
    (cd "$1" && find . -mindepth 1 -type f | sed 's|^\./||' | LC_ALL=C sort)
}

# link_target FILE: what the live link of FILE points at.
link_target() {
    case $1 in
    */*) echo "../current/$1" ;;
    *) echo "current/$1" ;;
    esac
}

links_ok() {
    for f in $(files "$1"); do
        [ -L "$f" ] && [ "$(readlink "$f")" = "$(link_target "$f")" ] || return 1
    done
}

# Replaces a path by a link with one rename. A regular file put there by
# hand (or by an older role) is replaced too: the set is what the role
# manages.
make_links() {
    for f in $(files "$1"); do
        want=$(link_target "$f")
        if [ -L "$f" ] && [ "$(readlink "$f")" = "$want" ]; then
            continue
        fi
        ln -sfn "$want" "$f.mtlsd-link"
        mv -fT "$f.mtlsd-link" "$f"
    done
}

point_current() {
    ln -sfn "$1" current.mtlsd-new
    mv -fT current.mtlsd-new current
}

case $cmd in
state)
    if [ -L current ] && [ "$(manifest sets/next)" = "$(manifest current/)" ] && links_ok sets/next; then
        echo same
    else
        echo differs
    fi
    ;;
swap)
    previous=none
    if [ -L current ]; then
        previous=$(readlink current)
    elif [ -f mtlsd.toml ] && [ ! -L mtlsd.toml ]; then
        # Files of an older role (no sets): they become a set of their
        # own first, with the same contents, so that mtlsd sees no change
        # while their paths turn into links; a failed swap goes back to it.
        rm -rf sets/.migrated
        mkdir -p sets/.migrated/tls
        for f in mtlsd.toml inventory.toml tls/*; do
            [ -f "$f" ] && cp -a "$f" "sets/.migrated/$f"
        done
        chown --reference=tls sets/.migrated/tls
        chmod --reference=tls sets/.migrated/tls
        chown --reference=sets/next sets/.migrated
        chmod --reference=sets/next sets/.migrated
        id=$(manifest sets/.migrated | sha256sum | cut -c1-16)
        rm -rf "sets/$id"
        mv sets/.migrated "sets/$id"
        point_current "sets/$id"
        make_links "sets/$id"
        previous=sets/$id
    fi
    id=$(manifest sets/next | sha256sum | cut -c1-16)
    if [ ! -d "sets/$id" ]; then
        rm -rf "sets/.$id"
        cp -a sets/next "sets/.$id"
        mv -T "sets/.$id" "sets/$id"
    fi
    # A new file name (a new trust domain) gets its link before the swap:
    # until then it leads nowhere, and the old configuration does not name
    # it.
    mkdir -p tls
    make_links "sets/$id"
    point_current "sets/$id"
    if [ "$previous" != "sets/$id" ] && [ "$previous" != none ]; then
        ln -sfn "$previous" previous.mtlsd-new
        mv -fT previous.mtlsd-new previous
    fi
    echo "$previous"
    ;;
restage)
    if [ "$(manifest sets/next)" != "$(manifest current/)" ]; then
        rm -rf sets/.next-new
        cp -a current/. sets/.next-new
        chown --reference=sets/next sets/.next-new
        chmod --reference=sets/next sets/.next-new
        rm -rf sets/next
        mv -T sets/.next-new sets/next
    fi
    echo restaged
    ;;
check-config)
    # Made from the staged file itself, not rendered again: what is checked
    # is exactly what will run, and push-inventory.yml, which has none of
    # the configuration's variables (trust domains may be facts of another
    # role), checks the live configuration with the staged inventory. The
    # role writes every path as "CONFIG_DIR/..." (mtlsd.toml.j2).
    base=${dir%/}
    sed "s|\"$base/|\"$base/sets/next/|g" sets/next/mtlsd.toml >sets/.next-check.toml
    chmod 0600 sets/.next-check.toml
    mv -f sets/.next-check.toml sets/next-check.toml
    echo sets/next-check.toml
    ;;
restore)
    point_current "$3"
    echo "current -> $3"
    ;;
prune)
    keep_current=$(readlink current 2>/dev/null || true)
    keep_previous=$(readlink previous 2>/dev/null || true)
    for s in sets/*; do
        case $s in
        sets/next | "$keep_current" | "$keep_previous") ;;
        *) rm -rf "$s" ;;
        esac
    done
    for f in mtlsd.toml inventory.toml tls/*; do
        if [ -L "$f" ] && [ ! -e "$f" ]; then
            case $(readlink "$f") in current/* | ../current/*) rm -f "$f" ;; esac
        fi
    done
    echo pruned
    ;;
*)
    echo "usage: mtlsd-set.sh CONFIG_DIR state|swap|restage|check-config|restore SET|prune" >&2
    exit 2
    ;;
esac
