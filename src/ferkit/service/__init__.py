"""`ferkit serve`: the HTTP/WebSocket service and its browser page (needs the `ferkit[serve]` extra).

    from ferkit.service import ServiceConfig, create_app
    app = create_app(ServiceConfig(workers=2))      # an ASGI app for uvicorn
"""

from ferkit.service.app import create_app
from ferkit.service.config import ServiceConfig

__all__ = ["ServiceConfig", "create_app"]
