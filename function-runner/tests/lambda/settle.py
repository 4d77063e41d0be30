"""A Lambda handler for AWS's self-managed Kafka event, as one would write it for Lambda: decodes
each record and returns one output record per input (the runner produces them).

Test hooks, by input value: {"poison": true} raises; {"crash": PATH} kills the process the first
time (creating PATH), as a runtime crash would; {"hang": PATH} hangs the first time (creating
PATH), as a handler stuck past its timeout would.
"""

import base64
import json
import os
import time


def header_text(values):
    # AWS writes header bytes as Java's signed bytes (-128..127).
    return bytes(b & 0xFF for b in values).decode("utf-8")


def handler(event, context):
    assert event["eventSource"] == "SelfManagedKafka"
    assert context.get_remaining_time_in_millis() > 0
    out = []
    for group, records in event["records"].items():
        for r in records:
            assert group == "%s-%d" % (r["topic"], r["partition"])
            key = base64.b64decode(r["key"]).decode() if "key" in r else None
            value = json.loads(base64.b64decode(r["value"])) if "value" in r else None
            if isinstance(value, dict) and value.get("poison"):
                raise ValueError("poison record at offset %d" % r["offset"])
            if isinstance(value, dict) and value.get("crash") and not os.path.exists(value["crash"]):
                open(value["crash"], "w").close()
                os._exit(3)
            if isinstance(value, dict) and value.get("hang") and not os.path.exists(value["hang"]):
                open(value["hang"], "w").close()
                time.sleep(600)
            headers = {k: header_text(v) for h in r["headers"] for k, v in h.items()}
            out.append({
                "key": key,
                "value": {"in": value, "partition": r["partition"], "offset": r["offset"], "headers": headers,
                          "requestId": context.aws_request_id},
                "headers": {"runtime": "awslambdaric"},
            })
    return {"records": out}
