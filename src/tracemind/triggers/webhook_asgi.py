"""The ASGI app the webhook's gunicorn serves; the trigger process passes its channel's path."""

from __future__ import annotations

import os

from tracemind.triggers.webhook_app import build_app

asgi_app = build_app(os.environ["TM_WEBHOOK_CHANNEL"])
