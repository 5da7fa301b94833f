"""WSGI entry point for gunicorn: `gunicorn orchestrator.api.wsgi:app`."""

from orchestrator.api import create_app
from orchestrator.log import configure
from orchestrator.settings import get_settings

_settings = get_settings()
configure(json_logs=_settings.log_json, level=_settings.log_level, secrets=_settings.secrets())
app = create_app(_settings)
