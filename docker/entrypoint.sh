#!/bin/sh
# Entry point of the image: checks the outputs mount, then runs the command (default
# `dvc repro`) so that `docker stop` stops it cleanly.
set -eu
# A Dask scheduler or worker (`dask scheduler ...`, `dask worker ...`) writes no outputs, so
# needs no mount, and closes cleanly on the SIGTERM of `docker stop` by itself: run it as PID 1.
# (With the SIGINT to the whole group used below, the worker process under a nanny got the
# signal too and did not close within the nanny's 8 s, so the nanny killed it.)
if [ "${1:-}" = dask ]; then
    exec "$@"
fi
if [ ! -w /app/outputs ]; then
    echo "error: /app/outputs is not writable by uid $(id -u); run with" \
        "--user \"\$(id -u):\$(id -g)\" or make the mounted folder writable" >&2
    exit 2
fi
# As PID 1, dvc would ignore the SIGTERM of `docker stop` and forward nothing. Run it in its
# own process group and turn TERM and INT into a SIGINT to the whole group (dvc and the stage),
# which the tune stage answers by stopping cleanly: finished trials kept, MLflow runs closed.
setsid "$@" &
child=$!
trap 'kill -INT "-$child" 2>/dev/null || true' TERM INT
while :; do
    if wait "$child"; then status=0; else status=$?; fi
    kill -0 "$child" 2>/dev/null || break  # wait also returns when a trap ran
done
exit "$status"
