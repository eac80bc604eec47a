"""The web process: Flask, with WebSocket tails on simple-websocket. It never touches
Docker and never blocks on a task.

Kept free of imports: ``python -m api.serve`` must patch the standard library with gevent
before anything imports ``socket`` or ``ssl``. The app factory is ``api.app.create_app``.
"""
