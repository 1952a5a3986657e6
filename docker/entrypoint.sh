#!/bin/sh
# Entry point of the image: checks the outputs mount, then hands the command (default
# `dvc repro`) to dumb-init, a real init for PID 1 that reaps zombies and forwards signals.
set -eu
# A Dask scheduler or worker (`dask scheduler ...`, `dask worker ...`) writes no outputs, so it
# needs no mount, and closes cleanly on the SIGTERM of `docker stop` by itself: the signal goes
# to it alone (a worker under a nanny that got it too would not close in the nanny's 8 s).
if [ "${1:-}" = dask ]; then
    exec dumb-init --single-child -- "$@"
fi
if [ ! -w /app/outputs ]; then
    echo "error: /app/outputs is not writable by uid $(id -u); run with" \
        "--user \"\$(id -u):\$(id -g)\" or make the mounted folder writable" >&2
    exit 2
fi
# DVC's state, behind the image's symlinks (see the Dockerfile); a lock file with no stages
# yet for a first run, as DVC reads an existing dvc.lock.
state=/app/outputs/.dvc-state
mkdir -p "$state/tmp" "$state/prepared"
[ -e "$state/dvc.lock" ] || printf "schema: '2.0'\nstages: {}\n" >"$state/dvc.lock"
# The SIGTERM of `docker stop` arrives as SIGINT (Ctrl-C) at the whole process group, dvc and
# the running stage alike: dvc waits for the stage, tune keeps its finished trials and closes
# its MLflow runs, and any other stage stops with one line.
exec dumb-init --rewrite 15:2 -- "$@"
