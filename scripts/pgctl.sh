#!/usr/bin/env bash
# Stops/starts the private PostgreSQL cluster that scripts/services.sh runs,
# for tests: "$WEFT_TEST_PG_CTL stop" / "$WEFT_TEST_PG_CTL start".
# Uses the same WEFT_SERVICES_DIR / WEFT_PG_PORT (exported by `services.sh env`).
set -euo pipefail
case "${1:-}" in
    start|stop|status) exec "$(dirname "${BASH_SOURCE[0]}")/services.sh" "$1" postgres ;;
    restart)
        "$(dirname "${BASH_SOURCE[0]}")/services.sh" stop postgres
        exec "$(dirname "${BASH_SOURCE[0]}")/services.sh" start postgres ;;
    *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
