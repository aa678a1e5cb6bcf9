"""Least privilege, read off the deployed (transformed) template.

The S3 grants of each step are written out below as the specification: a grant added
to or missing from a role fails here first. Keys of the lake:
``_claims/*`` commit records, ``_staging/*`` uncommitted Parquet, and the committed
windows ``table/yyyy/mm/dd/hhmmssffffff.parquet``.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.infra

TABLE_KEYS = "*/????/??/??/????????????.parquet"
REPAIR_KEYS = "*/????/??/??/????????????-repair-*.parquet"
KMS_VIA_S3 = {"kms:Decrypt", "kms:GenerateDataKey"}
INGEST_STEPS = ["StartRun", "GetLastIngestTime", "QueryToParquet", "CommitTable", "Aggregate"]
STEPS = [*INGEST_STEPS, "AuditTable", "AuditSummary"]
DATABASE_STEPS = ("StartRun", "QueryToParquet", "AuditTable")

S3_GRANTS: dict[str, set[tuple[str, str]]] = {
    "StartRun": set(),
    "GetLastIngestTime": {
        ("s3:ListBucket", ""),
        ("s3:GetObject", "_claims/*"),
        ("s3:GetObject", "_staging/*"),
        ("s3:GetObject", TABLE_KEYS),
        ("s3:PutObject", TABLE_KEYS),
        ("s3:AbortMultipartUpload", TABLE_KEYS),
        ("s3:DeleteObject", "_staging/*"),
        ("s3:DeleteObject", "_claims/*"),
    },
    "QueryToParquet": {
        ("s3:ListBucket", ""),
        ("s3:GetObject", TABLE_KEYS),
        ("s3:GetObject", "_claims/*"),
        ("s3:PutObject", "_staging/*"),
        ("s3:AbortMultipartUpload", "_staging/*"),
        ("s3:ListMultipartUploadParts", "_staging/*"),
    },
    "CommitTable": {
        ("s3:ListBucket", ""),
        ("s3:GetObject", "_claims/*"),
        ("s3:GetObject", "_staging/*"),
        ("s3:GetObject", TABLE_KEYS),
        ("s3:PutObject", "_claims/*"),
        ("s3:PutObject", TABLE_KEYS),
        ("s3:AbortMultipartUpload", TABLE_KEYS),
        ("s3:DeleteObject", "_staging/*"),
    },
    "Aggregate": set(),
    # Reads a table's history; writes repair objects (never a window's key), tombstones
    # and its lease, and deletes only its lease.
    "AuditTable": {
        ("s3:ListBucket", ""),
        ("s3:GetObject", TABLE_KEYS),
        ("s3:GetObject", REPAIR_KEYS),
        ("s3:GetObject", "_claims/*"),
        ("s3:GetObject", "_tombstones/*"),
        ("s3:GetObject", "_audit/*"),
        ("s3:PutObject", REPAIR_KEYS),
        ("s3:PutObject", "_tombstones/*"),
        ("s3:PutObject", "_audit/*"),
        ("s3:DeleteObject", "_audit/*"),
    },
    "AuditSummary": set(),
}
# s3:ListBucket is limited by s3:prefix to what each step lists, and to the keys whose
# absence it must see as 404 (S3 checks ListBucket with s3:prefix = the missing key).
LIST_PREFIXES: dict[str, set[str]] = {
    "GetLastIngestTime": {"*/", "_claims/*", "_staging/*", TABLE_KEYS},
    "QueryToParquet": {"*/", "_claims/*", "_staging/*", TABLE_KEYS},
    "CommitTable": {"_claims/*", "_staging/*", TABLE_KEYS},
    "AuditTable": {"*/", "_claims/*", "_audit/*", TABLE_KEYS},
}


def render(value: Any) -> str:
    """An intrinsic as a readable string: Refs and GetAtts by name, the first If branch."""
    if isinstance(value, str):
        return value
    ((function, argument),) = value.items()
    if function == "Ref":
        return str(argument)
    if function == "Fn::GetAtt":
        return ".".join(argument)
    if function == "Fn::If":
        return render(argument[1])
    if function == "Fn::Sub":
        pattern, variables = (argument, {}) if isinstance(argument, str) else argument
        for name, variable in variables.items():
            pattern = pattern.replace("${" + name + "}", render(variable))
        return str(pattern)
    raise AssertionError(f"unexpected intrinsic {function}")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(transformed: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The role's inline statements, conditional ones included."""
    found: list[dict[str, Any]] = []
    for policy in transformed["Resources"][role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:
                found.extend(s for s in statement["Fn::If"][1:] if "Effect" in s)
            else:
                found.append(statement)
    return found


def grants(transformed: dict[str, Any], role: str) -> set[tuple[str, str]]:
    """(action, resource) pairs of the role's Allow statements, resources rendered."""
    pairs = set()
    for statement in statements(transformed, role):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                pairs.add((action, render(resource)))
    return pairs


def s3_grants(transformed: dict[str, Any], role: str) -> set[tuple[str, str]]:
    bucket = "arn:${AWS::Partition}:s3:::IngestBucket"
    return {
        (action, resource.removeprefix(bucket).removeprefix("/"))
        for action, resource in grants(transformed, role)
        if action.startswith("s3:")
    }


@pytest.mark.parametrize("step", STEPS)
def test_each_step_has_exactly_the_s3_grants_its_step_needs(
    transformed: dict[str, Any], step: str
) -> None:
    assert s3_grants(transformed, f"{step}Role") == S3_GRANTS[step]


@pytest.mark.parametrize("step", sorted(LIST_PREFIXES))
def test_each_step_lists_only_the_prefixes_it_lists(transformed: dict[str, Any], step: str) -> None:
    (listing,) = [
        s for s in statements(transformed, f"{step}Role") if s["Action"] == "s3:ListBucket"
    ]

    assert set(listing["Condition"]) == {"StringLike"}
    assert set(listing["Condition"]["StringLike"]["s3:prefix"]) == LIST_PREFIXES[step]


def via_service(statement: dict[str, Any]) -> str:
    return render(statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService", ""))


@pytest.mark.parametrize("step", STEPS)
def test_each_step_uses_the_bucket_key_only_through_s3_and_only_if_it_uses_s3(
    transformed: dict[str, Any], step: str
) -> None:
    kms = [
        s
        for s in statements(transformed, f"{step}Role")
        if any(a.startswith("kms:") for a in as_list(s["Action"]))
        and not via_service(s).startswith("secretsmanager.")
    ]

    if S3_GRANTS[step]:
        (statement,) = kms
        assert set(statement["Action"]) == KMS_VIA_S3
        assert via_service(statement) == "s3.${AWS::Region}.amazonaws.com"
    else:
        assert kms == []


@pytest.mark.parametrize("step", STEPS)
def test_only_the_database_steps_read_the_secret(transformed: dict[str, Any], step: str) -> None:
    reads = {r for a, r in grants(transformed, f"{step}Role") if a.startswith("secretsmanager:")}

    if step in DATABASE_STEPS:
        assert reads == {"DbSecretArn"} or reads == {
            "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
            ":secret:${DbSecretName}-??????"
        }
    else:
        assert reads == set()


def test_the_secret_is_matched_by_its_name_when_no_arn_is_given(
    transformed: dict[str, Any],
) -> None:
    (statement,) = [
        s
        for s in statements(transformed, "StartRunRole")
        if s.get("Sid") == "ReadTheDatabaseSecret"
    ]

    condition, given_arn, by_name = statement["Resource"]["Fn::If"]

    assert (condition, given_arn) == ("HasDbSecretArn", {"Ref": "DbSecretArn"})
    assert render(by_name).endswith(":secret:${DbSecretName}-??????")


@pytest.mark.parametrize("step", STEPS)
def test_each_function_writes_only_its_own_log_group(
    transformed: dict[str, Any], step: str
) -> None:
    function = transformed["Resources"][f"{step}Function"]["Properties"]
    logs = {(a, r) for a, r in grants(transformed, f"{step}Role") if a.startswith("logs:")}

    assert function["LoggingConfig"]["LogGroup"] == {"Ref": f"{step}LogGroup"}
    assert logs == {
        ("logs:CreateLogStream", f"{step}LogGroup.Arn"),
        ("logs:PutLogEvents", f"{step}LogGroup.Arn"),
    }


@pytest.mark.parametrize("step", STEPS)
def test_each_function_has_its_own_role(transformed: dict[str, Any], step: str) -> None:
    function = transformed["Resources"][f"{step}Function"]["Properties"]

    assert function["Role"] == {"Fn::GetAtt": [f"{step}Role", "Arn"]}


@pytest.mark.parametrize("step", STEPS)
def test_only_the_database_steps_may_join_the_vpc(transformed: dict[str, Any], step: str) -> None:
    function = transformed["Resources"][f"{step}Function"]["Properties"]
    managed = [
        render(arn)
        for arn in transformed["Resources"][f"{step}Role"]["Properties"]["ManagedPolicyArns"]
    ]
    eni = any(arn.endswith("AWSLambdaENIManagementAccess") for arn in managed)

    assert ("VpcConfig" in function) == eni == (step in DATABASE_STEPS)


def test_the_state_machine_may_invoke_exactly_its_five_functions(
    transformed: dict[str, Any],
) -> None:
    invokes = {r for a, r in grants(transformed, "StateMachineRole") if a.startswith("lambda:")}

    assert invokes == {f"{step}Function.Arn" for step in INGEST_STEPS}


def test_the_state_machine_may_run_its_own_map_children_and_touch_only_staging(
    transformed: dict[str, Any],
) -> None:
    machine = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
    own = {
        (a, r)
        for a, r in grants(transformed, "StateMachineRole")
        if a.startswith(("states:", "s3:"))
    }

    assert transformed["Resources"]["IngestStateMachine"]["Properties"]["StateMachineName"] == {
        "Fn::Sub": "${AWS::StackName}-ingest"
    }
    assert own == {
        ("states:StartExecution", f"{machine}:stateMachine:${{AWS::StackName}}-ingest"),
        ("states:DescribeExecution", f"{machine}:execution:${{AWS::StackName}}-ingest/*"),
        ("states:StopExecution", f"{machine}:execution:${{AWS::StackName}}-ingest/*"),
        *(
            (action, "arn:${AWS::Partition}:s3:::IngestBucket/_staging/*")
            for action in (
                "s3:GetObject",
                "s3:PutObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            )
        ),
    }


def test_the_audit_state_machine_may_invoke_exactly_its_three_functions(
    transformed: dict[str, Any],
) -> None:
    role = "AuditStateMachineRole"
    invokes = {r for a, r in grants(transformed, role) if a.startswith("lambda:")}

    assert invokes == {f"{step}Function.Arn" for step in ("StartRun", "AuditTable", "AuditSummary")}


def test_the_schedule_may_only_start_this_state_machine_and_dead_letter_what_it_cannot(
    transformed: dict[str, Any],
) -> None:
    schedule_roles = sorted(
        n
        for n, r in transformed["Resources"].items()
        if r["Type"] == "AWS::IAM::Role" and "Schedule" in n
    )
    schedules = {
        r["Properties"]["Target"]["Arn"]["Ref"]: r["Properties"]
        for r in transformed["Resources"].values()
        if r["Type"] == "AWS::Scheduler::Schedule"
    }

    assert schedule_roles == ["AuditScheduleRole", "ScheduleRole"]
    for machine, role in (
        ("IngestStateMachine", "ScheduleRole"),
        ("AuditStateMachine", "AuditScheduleRole"),
    ):
        schedule = schedules[machine]
        assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": [role, "Arn"]}
        assert schedule["Target"]["DeadLetterConfig"] == {
            "Arn": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}
        }
        assert grants(transformed, role) == {
            ("states:StartExecution", machine),
            ("sqs:SendMessage", "ScheduleDeadLetterQueue.Arn"),
            ("kms:Decrypt", "IngestKey.Arn"),
            ("kms:GenerateDataKey", "IngestKey.Arn"),
        }


def test_the_service_roles_can_be_assumed_only_on_behalf_of_this_account(
    transformed: dict[str, Any],
) -> None:
    for role in ("StateMachineRole", "ScheduleRole", "AuditStateMachineRole", "AuditScheduleRole"):
        (trust,) = transformed["Resources"][role]["Properties"]["AssumeRolePolicyDocument"][
            "Statement"
        ]
        assert trust["Condition"] == {
            "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
        }


def test_every_role_takes_the_optional_permissions_boundary(transformed: dict[str, Any]) -> None:
    boundaries = {
        n: r["Properties"].get("PermissionsBoundary")
        for n, r in transformed["Resources"].items()
        if r["Type"] == "AWS::IAM::Role"
    }

    assert len(boundaries) == len(STEPS) + 4
    assert set(map(str, boundaries.values())) == {
        str({"Fn::If": ["HasPermissionsBoundary", {"Ref": "PermissionsBoundaryArn"},
                        {"Ref": "AWS::NoValue"}]})
    }  # fmt: skip


LOG_DELIVERY = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


def test_only_log_delivery_is_granted_on_every_resource_as_aws_requires(
    transformed: dict[str, Any],
) -> None:
    roles = [n for n, r in transformed["Resources"].items() if r["Type"] == "AWS::IAM::Role"]

    unscoped = {
        (role, action)
        for role in roles
        for action, resource in grants(transformed, role)
        if resource == "*"
    }

    assert unscoped == {
        (role, action)
        for role in ("StateMachineRole", "AuditStateMachineRole")
        for action in LOG_DELIVERY
    }


def test_every_role_trusts_only_its_own_service(transformed: dict[str, Any]) -> None:
    roles = {
        n: r["Properties"]
        for n, r in transformed["Resources"].items()
        if r["Type"] == "AWS::IAM::Role"
    }

    principals = {
        name: {
            p
            for s in role["AssumeRolePolicyDocument"]["Statement"]
            for p in as_list(s["Principal"]["Service"])
        }
        for name, role in roles.items()
    }

    assert all(len(services) == 1 for services in principals.values())
    assert principals["StateMachineRole"] == {"states.amazonaws.com"}
    assert principals["AuditStateMachineRole"] == {"states.amazonaws.com"}
    assert all(principals[f"{step}Role"] == {"lambda.amazonaws.com"} for step in STEPS)


def test_the_bucket_denies_requests_without_tls(template: dict[str, Any]) -> None:
    policy = template["Resources"]["IngestBucketPolicy"]["Properties"]["PolicyDocument"]

    (deny,) = [s for s in policy["Statement"] if s["Sid"] == "DenyInsecureTransport"]

    assert deny["Effect"] == "Deny"
    assert deny["Principal"] == "*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_bucket_blocks_all_public_access(template: dict[str, Any]) -> None:
    block = template["Resources"]["IngestBucket"]["Properties"]["PublicAccessBlockConfiguration"]

    assert block == dict.fromkeys(
        ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"], True
    )


def test_the_bucket_is_versioned_and_encrypted_with_the_stack_key(
    template: dict[str, Any],
) -> None:
    bucket = template["Resources"]["IngestBucket"]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]

    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": ["IngestKey", "Arn"]},
    }


def test_the_bucket_expires_staging_but_never_claims_or_table_keys(
    template: dict[str, Any],
) -> None:
    rules = template["Resources"]["IngestBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]

    expiring = {r.get("Prefix", "") for r in rules if "ExpirationInDays" in r}

    assert expiring == {"_staging/"}
    assert any("NoncurrentVersionExpiration" in r and "Prefix" not in r for r in rules)


def test_the_bucket_and_its_key_outlive_the_stack(template: dict[str, Any]) -> None:
    for name in ("IngestBucket", "IngestKey"):
        resource = template["Resources"][name]
        assert (resource["DeletionPolicy"], resource["UpdateReplacePolicy"]) == ("Retain", "Retain")


GLUE_ACTIONS = {"glue:GetTable", "glue:CreateTable", "glue:UpdateTable"}
GLUE_RESOURCES = {
    "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:catalog",
    "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:database/${LakeDatabase}",
    "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:table/${LakeDatabase}/*",
}


@pytest.mark.parametrize("step", STEPS)
def test_only_commit_table_keeps_the_glue_catalog_and_only_the_lakes_tables(
    transformed: dict[str, Any], step: str
) -> None:
    glue = {
        (action, resource)
        for action, resource in grants(transformed, f"{step}Role")
        if action.startswith("glue:")
    }
    expected = (
        {(a, r) for a in GLUE_ACTIONS for r in GLUE_RESOURCES} if step == "CommitTable" else set()
    )
    assert glue == expected


def test_commit_table_is_told_the_glue_database_it_may_write(template: dict[str, Any]) -> None:
    function = template["Resources"]["CommitTableFunction"]["Properties"]
    assert function["Environment"]["Variables"]["GLUE_DATABASE"] == {"Ref": "LakeDatabase"}


def test_the_athena_workgroup_enforces_encrypted_results_in_its_own_bucket(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    config = resources["AthenaWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    results = config["ResultConfiguration"]
    assert results["EncryptionConfiguration"] == {
        "EncryptionOption": "SSE_KMS",
        "KmsKey": {"Fn::GetAtt": ["IngestKey", "Arn"]},
    }
    assert render(results["OutputLocation"]) == "s3://${AthenaResultsBucket}/results/"
    bucket = resources["AthenaResultsBucket"]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    policy = resources["AthenaResultsBucketPolicy"]["Properties"]["PolicyDocument"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in policy["Statement"]
    )
