"""Answers questions about Synapse's router and Twisted's request parsing, for heirloom's gateway
tests (gateway/synapse_test.go), from the Synapse and Twisted installed in this virtualenv.

Usage: python synapse_oracle.py WORKDIR < {"paths": [...], "queries": [b64...], "content_types": [b64...]}
Prints {"routes": [{"servlets", "methods"}], "queries": [{b64 key: [b64 value]}], "content_types": [...]}.
"""

import base64
import json
import logging
import os
import subprocess
import sys

from twisted.web.http import _parseContentType, parse_qs


def homeserver(workdir):
    """A HomeServer of a generated config (SQLite in workdir), set up but not started."""
    config_path = os.path.join(workdir, "homeserver.yaml")
    subprocess.run(
        [sys.executable, "-m", "synapse.app.homeserver", "--generate-config", "--server-name", "localhost",
         "--config-path", config_path, "--report-stats", "no", "--data-directory", workdir],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(config_path, "a") as f:
        # As scripts/synapse.sh configures the test homeserver.
        f.write("\nexperimental_features:\n  msc2409_to_device_messages_enabled: true\n"
                "  msc3202_transaction_extensions: true\nenable_media_repo: true\n"
                "suppress_key_server_warning: true\n")
    logging.disable(logging.CRITICAL)
    from synapse.app.homeserver import SynapseHomeServer
    from synapse.config.homeserver import HomeServerConfig

    config = HomeServerConfig.load_config("oracle", ["-c", config_path])
    hs = SynapseHomeServer(config.server.server_name, config=config)
    hs.setup()
    return hs


def routers(hs):
    """The route tables of the resources the client listener mounts, by path prefix."""
    from synapse.http.server import JsonResource
    from synapse.rest import ClientRestResource, admin
    from synapse.rest.media.media_repository_resource import MediaRepositoryResource

    admin_resource = JsonResource(hs, canonical_json=False)
    admin.register_servlets(hs, admin_resource)
    return [
        ("/_matrix/client/", ClientRestResource(hs)._routes),
        ("/_synapse/admin/", admin_resource._routes),
        ("/_matrix/media/", MediaRepositoryResource(hs)._routes),
    ]


def route(tables, path):
    """Synapse's JsonResource._get_handler_for_request: the first route whose pattern matches."""
    for prefix, routes in tables:
        if not path.startswith(prefix):
            continue
        for pattern, methods in routes.items():
            if pattern.match(path):
                return {
                    "servlets": sorted({m.servlet_classname for m in methods.values()}),
                    "methods": sorted(m.decode() for m in methods),
                }
    return {"servlets": [], "methods": []}


def main():
    request = json.load(sys.stdin)
    b64 = lambda b: base64.b64encode(b).decode()
    unb64 = base64.b64decode
    tables = routers(homeserver(sys.argv[1]))
    answer = {
        "routes": [route(tables, p) for p in request["paths"]],
        "queries": [
            {b64(k): [b64(v) for v in vs] for k, vs in parse_qs(unb64(q), 1).items()}
            for q in request["queries"]
        ],
        "content_types": [_parseContentType(unb64(c)).decode("charmap") for c in request["content_types"]],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
