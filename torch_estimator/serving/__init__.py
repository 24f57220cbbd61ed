"""Serving exports: load one and call its signatures, or answer TF Serving's REST API over a base directory.

* :mod:`.loader` loads an export and checks every input against its ``signature.json``. It imports only torch
  and the standard library, so it can be copied on its own next to a server.
* :mod:`.server` is ``torch-estimator serve``: the model server. It answers with the served version
  (:mod:`.versions`), translates TF Serving's JSON and the Open Inference Protocol (:mod:`.rest`) and batches
  concurrent requests (:mod:`.batching`); the HTTP side is an ASGI application (:mod:`.app`) run by
  uvicorn behind connection guards (:mod:`.transport`), both needing the ``serve`` extra.

This package imports none of them, so importing the loader loads nothing else (see docs/serving.md).
"""
