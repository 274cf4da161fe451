#!/bin/sh
# The llama-server on PATH (a distro package, Homebrew, your own build), started with the same
# arguments, port and LLAMA_API_KEY environment switchboard gives its embedded runners.
command -v llama-server >/dev/null 2>&1 || { echo "llama-server is not on PATH" >&2; exit 127; }
exec llama-server "$@"
