"""The sampling web service (`diffuse serve`): `jobs` holds the queue and workers and needs only
torch; `app` the HTTP API and the page, which need the `serve` extra (Starlette and uvicorn)."""
