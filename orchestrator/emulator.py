"""Where moto falls short of AWS for this platform, the fix lives here — applied by the sandbox
launcher (`python -m orchestrator.emulator`, which then runs moto's server) and by the test
fixtures; the steps never know. Each fix names the moto gap it covers (see MOTO-NOTES.md)."""
from __future__ import annotations

import json
import sys


def keep_create_bucket_tags() -> None:
    """moto gap: create_bucket ignores `CreateBucketConfiguration.Tags`, which AWS applies in the
    create call itself. Apply them on moto's side, as AWS does."""
    import xmltodict
    from moto.s3.responses import S3Response

    original = S3Response._bucket_response_put

    def put_with_tags(self, request, bucket_name, querystring):
        response = original(self, request, bucket_name, querystring)
        if not querystring and self.body:
            config = xmltodict.parse(self.body).get("CreateBucketConfiguration") or {}
            tags = (config.get("Tags") or {}).get("Tag") or []
            tags = tags if isinstance(tags, list) else [tags]
            if tags:
                self.backend.put_bucket_tagging(bucket_name, {t["Key"]: t.get("Value") or "" for t in tags})
        return response

    S3Response._bucket_response_put = put_with_tags


def understand_secure_transport() -> None:
    """moto gap (MOTO-NOTES S3 (1)): moto treats `aws:SecureTransport` as false whatever the
    transport, so the buckets' "deny unless TLS" statement denies every object call. Evaluate
    bucket policies without that statement, as AWS does for requests over TLS."""
    from moto.iam.access_control import IAMPolicy
    from moto.s3.models import FakeBucket

    original = FakeBucket.get_permission

    def get_permission(self, action, resource):
        if self.policy is None:
            return original(self, action, resource)
        policy = json.loads(self.policy)
        policy["Statement"] = [s for s in policy["Statement"]
                               if s.get("Condition") != {"Bool": {"aws:SecureTransport": "false"}}]
        return IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource)

    FakeBucket.get_permission = get_permission


def serialize_requests() -> None:
    """moto gap: its backends are plain dicts without locks, so requests served at once can
    break each other (a tagging-API read iterating resources while another request adds one
    fails with "dictionary changed size during iteration"). AWS serves concurrent requests;
    the orchestrator sends them (steps run in parallel). Serve moto's one request at a time,
    in-process and in the server."""
    import threading

    from moto.core.botocore_stubber import BotocoreStubber
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    lock = threading.RLock()
    for cls in (BotocoreStubber, DomainDispatcherApplication):
        original = cls.__call__

        def locked(self, *args, _original=original, **kwargs):
            with lock:
                return _original(self, *args, **kwargs)

        cls.__call__ = locked


_applied = False


def apply_fixes() -> None:
    """Patch moto once per process."""
    global _applied
    if not _applied:
        keep_create_bucket_tags()
        understand_secure_transport()
        serialize_requests()
        _applied = True


def main() -> None:
    """moto's server with the fixes applied; takes moto_server's arguments."""
    from moto.server import main as moto_server
    apply_fixes()
    moto_server(sys.argv[1:])


if __name__ == "__main__":
    main()
