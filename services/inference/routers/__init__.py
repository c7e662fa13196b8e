"""Thin FastAPI routers, one per endpoint group; the work happens in the serving_* modules."""
