"""The HTTP service: ``triagegate serve GRAPH`` exposes one loaded pipeline over a small JSON API.

Build the ASGI app with :func:`triagegate.serve.app.create_app`; it needs the ``serve``
extra (FastAPI, uvicorn, prometheus-client, python-multipart).
"""
