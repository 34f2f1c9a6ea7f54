"""Python requests through tokenproxy's egress listener, set up by the environment alone:
HTTPS_PROXY / HTTP_PROXY and REQUESTS_CA_BUNDLE. Prints {status, body} as one JSON line."""
import json
import sys

import requests

response = requests.get(sys.argv[1], timeout=20)
print(json.dumps({"status": response.status_code, "body": response.text}))
