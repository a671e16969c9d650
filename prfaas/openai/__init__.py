"""The OpenAI HTTP API, as a library: request models and the fields refused, chat templates, stop strings,
response and stream shapes, errors. No server here: `services/router/http_api.py` serves it."""
