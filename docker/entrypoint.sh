#!/bin/sh
# Fail early and clearly when the mounted outputs folder cannot be written by this uid.
set -eu
if [ ! -w /app/outputs ]; then
    echo "error: /app/outputs is not writable by uid $(id -u); run with" \
        "--user \"\$(id -u):\$(id -g)\" or make the mounted folder writable" >&2
    exit 2
fi
exec "$@"
