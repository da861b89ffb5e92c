"""AWS Fault Injection Service, which moto lacks: its documented CreateExperimentTemplate,
StartExperiment, GetExperiment and DeleteExperimentTemplate responses (rest-json, the shapes of
https://docs.aws.amazon.com/fis/latest/APIReference/) answered at the botocore level on the real
client spotrun uses, and the experiment's effect played by the real peers:

- StartExperiment: the IMDS stand-in marks the instance (the two-minute notice FIS has EC2 send);
- once ``safe()`` says the run secured its checkpoint (or ``after_s`` passed, as AWS would not
  wait), the notice is taken back (a replacement gets none) and the instance is taken:
  ``take_back(instance_ids)``, by default moto's termination (a test whose instances have disks
  of their own removes them there too);
- GetExperiment: initiating, then running, then completed once the instance is terminated.

`requests` keeps every (operation, parsed JSON body) the client sent, for tests that look.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable

from botocore.awsrequest import AWSResponse

_ids = itertools.count(1)


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_):
        yield self._body


class FisStandIn:
    def __init__(
        self,
        client,
        imds,
        ec2,
        safe: Callable[[], bool] = lambda: True,
        after_s: float = 120,
        take_back: Callable[[list[str]], None] | None = None,
    ):
        self.imds, self.ec2, self.safe, self.after_s = imds, ec2, safe, after_s
        self.take_back = take_back or (lambda ids: ec2.terminate_instances(InstanceIds=ids))
        self.templates: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.requests: list[tuple[str, dict]] = []
        self.terminated: list[str] = []
        self.refuse_starts = 0  # StartExperiment refusals to give first (a role IAM has not propagated)
        self._lock = threading.Lock()
        client.meta.events.register("before-send.fis", self._handle)

    # --- the wire ------------------------------------------------------------------------------------
    def _handle(self, request, **_):
        method, path = request.method, request.url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
        body = json.loads(request.body or b"{}") if request.body else {}
        parts = path.strip("/").split("/")
        if method == "POST" and parts == ["experimentTemplates"]:
            return self._reply(request, "CreateExperimentTemplate", body, self._create)
        if method == "POST" and parts == ["experiments"]:
            return self._reply(request, "StartExperiment", body, self._start)
        if method == "GET" and parts[0] == "experiments" and len(parts) == 2:
            return self._reply(request, "GetExperiment", {"id": parts[1]}, self._get)
        if method == "DELETE" and parts[0] == "experimentTemplates" and len(parts) == 2:
            return self._reply(request, "DeleteExperimentTemplate", {"id": parts[1]}, self._delete)
        raise AssertionError(f"FIS stand-in: {method} /{path} is not answered")

    def _reply(self, request, operation: str, body: dict, fn):
        with self._lock:
            self.requests.append((operation, body))
        status, payload = fn(body)
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if status >= 400:
            headers["x-amzn-ErrorType"] = payload["__type"]
        return AWSResponse(request.url, status, headers, _Raw(data))

    # --- the operations ------------------------------------------------------------------------------
    def _create(self, body: dict):
        template_id = f"EXT{next(_ids):012d}"
        now = time.time()
        template = {
            "id": template_id,
            "description": body.get("description", ""),
            "targets": body["targets"],
            "actions": body["actions"],
            "stopConditions": body["stopConditions"],
            "roleArn": body["roleArn"],
            "tags": body.get("tags", {}),
            "creationTime": now,
            "lastUpdateTime": now,
        }
        self.templates[template_id] = template
        return 200, {"experimentTemplate": template}

    def _start(self, body: dict):
        if self.refuse_starts:
            self.refuse_starts -= 1
            message = "Unable to assume role: the role cannot be assumed by fis.amazonaws.com"
            return 400, {"__type": "ValidationException", "message": message}
        template = self.templates.get(body["experimentTemplateId"])
        if template is None:
            return 404, {"__type": "ResourceNotFoundException", "message": "Experiment template not found"}
        experiment_id = f"EXP{next(_ids):012d}"
        experiment = {
            "id": experiment_id,
            "experimentTemplateId": template["id"],
            "roleArn": template["roleArn"],
            "state": {"status": "initiating", "reason": "Experiment is initiating."},
            "targets": template["targets"],
            "actions": template["actions"],
            "stopConditions": template["stopConditions"],
            "creationTime": time.time(),
            "startTime": time.time(),
            "tags": body.get("tags", {}),
        }
        self.experiments[experiment_id] = experiment
        arns = [a for t in template["targets"].values() for a in t.get("resourceArns", [])]
        instance_ids = [a.rsplit("/", 1)[-1] for a in arns]
        self.imds.mark_interruption()  # FIS has EC2 send the notice at once
        threading.Thread(target=self._interrupt, args=(experiment, instance_ids), daemon=True).start()
        return 200, {"experiment": experiment}

    def _interrupt(self, experiment: dict, instance_ids: list[str]) -> None:
        experiment["state"] = {"status": "running", "reason": "Experiment is running."}
        deadline = time.monotonic() + self.after_s
        while not self.safe() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.imds.clear()  # the replacement instance gets no notice
        self.take_back(instance_ids)
        self.terminated.extend(instance_ids)
        experiment["state"] = {"status": "completed", "reason": "Experiment completed."}
        experiment["endTime"] = time.time()

    def _get(self, body: dict):
        experiment = self.experiments.get(body["id"])
        if experiment is None:
            return 404, {"__type": "ResourceNotFoundException", "message": "Experiment not found"}
        return 200, {"experiment": experiment}

    def _delete(self, body: dict):
        template = self.templates.pop(body["id"], None)
        if template is None:
            return 404, {"__type": "ResourceNotFoundException", "message": "Experiment template not found"}
        return 200, {"experimentTemplate": template}
