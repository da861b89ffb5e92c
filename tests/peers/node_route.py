"""A ProxyCommand that takes SSH to the sshd standing in for a cluster member: `node_route.py
ROUTES HOST`. It asks moto (AWS_ENDPOINT_URL, the EC2 Query API over plain HTTP: no boto3 import
per connection) which instance has the public address HOST, reads its `spotrun:node` tag, looks the
node's sshd port up in ROUTES (JSON: {"0": port, "1": port}) and becomes `nc 127.0.0.1 PORT`.

So every instance moto launches for node K, the first one or a replacement, leads to node K's
sshd, as a real replacement is a new machine at a new address that plays the same part."""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET


def node_of(endpoint: str, host: str) -> str | None:
    body = urllib.parse.urlencode({"Action": "DescribeInstances", "Version": "2016-11-15"}).encode()
    # moto tells the service from the credential scope of the (unchecked) signature.
    scope = f"testing/20260101/{os.environ.get('AWS_DEFAULT_REGION', 'us-east-1')}/ec2/aws4_request"
    headers = {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    request = urllib.request.Request(endpoint, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as r:
        root = ET.fromstring(r.read())
    for item in root.iter():
        if not item.tag.endswith("}item") and item.tag != "item":
            continue
        fields = {child.tag.split("}")[-1]: child for child in item}
        if "instanceId" not in fields or fields.get("ipAddress") is None or fields["ipAddress"].text != host:
            continue
        for tag in fields["tagSet"] if "tagSet" in fields else []:
            kv = {c.tag.split("}")[-1]: c.text for c in tag}
            if kv.get("key") == "spotrun:node":
                return kv.get("value")
    return None


def main() -> None:
    routes, host = json.loads(open(sys.argv[1]).read()), sys.argv[2]
    node = node_of(os.environ["AWS_ENDPOINT_URL"], host)
    if node not in routes:
        sys.exit(f"node_route: no node for {host} (node tag {node!r})")
    os.execvp("nc", ["nc", "127.0.0.1", str(routes[node])])


if __name__ == "__main__":
    main()
