"""The tests' snapshots of moto's state (tests/moto_server.py), which the crash and command-line
tests start from: a restored state is the one saved, whole (the state table included), and
independent of what happens after the save or after the restore."""
from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from orchestrator.aws import Aws
from tests import harness
from tests.moto_server import Snapshots

MINE = [{"Name": "tag:orchestrator:env", "Values": ["dev"]}]


def vpcs() -> list[str]:
    return sorted(v["CidrBlock"] for v in boto3.client("ec2", region_name="us-east-1").describe_vpcs(
        Filters=MINE)["Vpcs"])


def test_a_restored_snapshot_is_the_state_saved_and_independent_of_later_changes(manifest, fake_aws_env):
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        tags = [{"ResourceType": "vpc", "Tags": [{"Key": "orchestrator:env", "Value": "dev"}]}]
        first = ec2.create_vpc(CidrBlock="10.1.0.0/16", TagSpecifications=tags)["Vpc"]["VpcId"]
        run = harness.engine(manifest, Aws("us-east-1"))  # the state table, its lock held
        snapshots = Snapshots()
        snapshots.save("one vpc")

        ec2.create_vpc(CidrBlock="10.2.0.0/16", TagSpecifications=tags)
        ec2.create_tags(Resources=[first], Tags=[{"Key": "later", "Value": "yes"}])
        run.lease.release()
        assert vpcs() == ["10.1.0.0/16", "10.2.0.0/16"]

        snapshots.restore("one vpc")
        assert vpcs() == ["10.1.0.0/16"]
        [vpc] = ec2.describe_vpcs(Filters=MINE)["Vpcs"]
        assert vpc["VpcId"] == first and {t["Key"] for t in vpc["Tags"]} == {"orchestrator:env"}
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        lock = dynamodb.get_item(TableName=manifest.state.table, Key={"pk": {"S": "gamepulse/dev"},
                                                                      "sk": {"S": "lock"}})["Item"]
        assert lock["run_id"]["S"] == run.lease.run_id, "the lock as it was at the save: held"

        ec2.delete_vpc(VpcId=first)  # a change to the restored state leaves the snapshot as it was
        snapshots.restore("one vpc")
        assert vpcs() == ["10.1.0.0/16"]

    with mock_aws():
        assert vpcs() == []  # a new mock starts empty: a restore does not outlive it
        with pytest.raises(KeyError):
            snapshots.restore("never saved")
