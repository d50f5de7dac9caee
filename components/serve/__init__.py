"""`pix2pixhd serve`: the HTTP API and the web editor on ONNX Runtime.

- ``engine``: the exported generator on ONNX Runtime, numpy only (no torch);
- ``maps``: reading uploaded PNGs with the limits and errors of the API;
- ``source``: MODEL (checkpoint, ONNX file or ``models:/<name>@<alias>``) -> ONNX file;
- ``app``: the FastAPI application (endpoints, worker pool, metrics, static editor);
- ``front``: what every request passes (request id, token, shutdown, body limit,
  metrics, JSON access log, JSON 500);
- ``server``: ``run(...)`` for the command line (uvicorn, the SIGTERM life cycle,
  ``--follow-alias``, ``--token-file``).

Everything but the checkpoint -> ONNX export imports without torch.
"""
