"""The web console: server-rendered pages (Jinja templates in templates/, CSS and one small script in
static/) on the admin API's listener. May import service, store, push, protocol and web.app; nothing imports it
but web.app's blueprint list."""

from appliance.web.console import admin, commands, pages, static  # noqa: F401  (routes register on import)
from appliance.web.console.base import blueprint

__all__ = ["blueprint"]
