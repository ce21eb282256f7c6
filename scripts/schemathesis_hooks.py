"""Schemathesis hooks for scripts/test-openapi.sh: the batch publish body
(application/x-ndjson) is one JSON object per line; the document describes
it as an array of records, and this writes the array as lines."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, list):
        return "\n".join(json.dumps(v) for v in value).encode()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return json.dumps(value).encode()
