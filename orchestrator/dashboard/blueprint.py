"""The dashboard blueprint, shared by the view modules."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
