"""The llm-node CrossGuard policies: policy/rules.py functions wrapped for the Pulumi CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

try:  # imported as the package `policy` (tests) or run from this directory by the Pulumi CLI
    from . import k8s_rules, rules
except ImportError:
    import k8s_rules  # type: ignore[no-redef]
    import rules  # type: ignore[no-redef]

PACK_NAME = "llm-node"
MANDATORY = EnforcementLevel.MANDATORY

ResourceRule = Callable[[str, Mapping], list]


def _resource_policy(name: str, description: str, rule: ResourceRule, remediation: str,
                     config_schema: PolicyConfigSchema | None = None,
                     rule_kwargs: Callable[[ResourceValidationArgs], dict] = lambda args: {}
                     ) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in rule(args.resource_type, args.props, **rule_kwargs(args)):
            report_violation(f"{args.name}: {message}")

    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    enforcement_level=MANDATORY, config_schema=config_schema,
                                    remediation_steps=remediation)


def _internal_ports(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    resources = [rules.Resource(r.resource_type, r.name, r.props) for r in args.resources]
    urns = {r.name: r.urn for r in args.resources}
    for name, message in rules.internal_services_publish_no_host_ports(resources):
        report_violation(f"{name}: {message}", urns.get(name))


def _gpus_exclusive(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    resources = [rules.Resource(r.resource_type, r.name, r.props) for r in args.resources]
    urns = {r.name: r.urn for r in args.resources}
    for name, message in rules.gpus_exclusive(resources):
        report_violation(f"{name}: {message}", urns.get(name))


# The one pack setting, shared by the Docker and Kubernetes secret policies.
ALLOWED_SECRET_ENV = PolicyConfigSchema(properties={"allowedSecretEnv": {
    "type": "array", "items": {"type": "string"}, "default": list(rules.DEFAULT_ALLOWED_SECRET_ENV),
    "description": "Env vars allowed to hold a secret (none by default: secrets are files)."}})


def _allowed_secret_env(args: ResourceValidationArgs) -> dict:
    return {"allowed_env": args.get_config().get("allowedSecretEnv", rules.DEFAULT_ALLOWED_SECRET_ENV)}


POLICIES = [
    StackValidationPolicy(
        name="internal-services-publish-no-host-ports",
        description="Containers on internal networks only (PostgreSQL, Redis, vLLM, Prometheus) publish no host "
                    "ports, and no container uses host networking.",
        validate=_internal_ports,
        enforcement_level=MANDATORY,
        remediation_steps="Remove `ports` from the container; reach it through the gateway or Traefik."),
    StackValidationPolicy(
        name="gpus-exclusive",
        description="Every GPU is requested by one long-running container at most (engine groups and their "
                    "replicas never share a GPU), always by id, never by count.",
        validate=_gpus_exclusive,
        enforcement_level=MANDATORY,
        remediation_steps="Give each engine group and replica its own GPUs (engines[].gpu_ids)."),
    _resource_policy(
        "healthcheck-and-restart-policy",
        "Every long-running container has a healthcheck and restarts (unless-stopped); one-shot jobs never restart.",
        rules.healthcheck_and_restart,
        "Add healthcheck=ContainerHealthcheckArgs(...) and restart='unless-stopped' (jobs: restart='no')."),
    _resource_policy(
        "graceful-stop",
        "Every long-running container has a stop_timeout and a destroy_grace_seconds at least as long, so "
        "replace and destroy stop it gracefully instead of with SIGKILL.",
        rules.graceful_stop,
        "Pass **containers.graceful_stop(seconds) to the container (stacks/containers.py)."),
    _resource_policy(
        "create-timeout-covers-waits",
        "Every one-shot job has a custom_timeouts create bound, and every container that `wait`s has a create "
        "timeout longer than its wait_timeout.",
        rules.create_timeout_covers_waits,
        "Pass bound_seconds to containers.service_options (the job's run bound, or the wait_timeout).",
        rule_kwargs=lambda args: {"create_timeout_seconds": (args.opts.custom_timeouts.create_seconds
                                                             if args.opts and args.opts.custom_timeouts else 0.0)}),
    _resource_policy(
        "pinned-images",
        "No image uses `latest` or an unpinned tag (containers, pulled images, built images and their bases).",
        rules.pinned_images,
        "Pin a version tag (x.y.z) or a digest in stacks/images.py or the stack's `images` overrides."),
    _resource_policy(
        "no-plain-secrets-in-env-or-args",
        "No secret-looking value sits in a container's env or command line.",
        rules.no_plain_secrets,
        "Upload the secret as a file from a Pulumi secret (containers.secret_file) and pass its path.",
        config_schema=ALLOWED_SECRET_ENV, rule_kwargs=_allowed_secret_env),
    _resource_policy(
        "traefik-exposed-by-default-off",
        "Traefik's Docker provider keeps exposedByDefault=false: only containers labelled traefik.enable are routed.",
        rules.traefik_exposed_by_default_off,
        "Set providers.docker.exposedByDefault: false in traefik/traefik.yml."),
    _resource_policy(
        "no-docker-socket",
        "No container mounts the Docker socket (read-only does not restrict the API) or is pointed at a Docker API.",
        rules.no_docker_socket,
        "Give the container what it reads from Docker as files instead (Traefik: dynamic/routes.yml, "
        "stacks/traefik.py)."),
]


# -- the kubernetes target (policy/k8s_rules.py) ---------------------------------------------------------


def _k8s_network_policies(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    resources = [rules.Resource(r.resource_type, r.name, r.props) for r in args.resources]
    urns = {r.name: r.urn for r in args.resources}
    for name, message in k8s_rules.network_policy_for_every_workload(resources):
        report_violation(f"{name}: {message}", urns.get(name))


POLICIES += [
    _resource_policy(
        "k8s-edge-only-external-service",
        "No Service of type LoadBalancer or NodePort except the edge's (Traefik), and no chart but the edge's "
        "asks for one.",
        k8s_rules.no_external_services,
        "Use a ClusterIP Service and route through the edge (Ingress/HTTPRoute)."),
    _resource_policy(
        "k8s-probes-and-resources",
        "Every long-running container has readiness and liveness probes; every container has cpu and memory "
        "requests and limits.",
        k8s_rules.probes_and_resources,
        "Add readinessProbe/livenessProbe and resources.requests/limits (stacks/kubernetes/manifests.py)."),
    _resource_policy(
        "k8s-no-privilege",
        "No privileged container, privilege escalation, added capability (but SYS_NICE), host namespace, "
        "hostPath volume or hostPort.",
        k8s_rules.no_privilege,
        "Set securityContext.privileged: false and allowPrivilegeEscalation: false; drop the host access."),
    _resource_policy(
        "k8s-pinned-images",
        "Every pod's container images, every chart version and chart image tag are pinned.",
        k8s_rules.pinned_images,
        "Pin a version tag or digest (stacks/images.py, the stack's kubernetes.*_chart_version)."),
    _resource_policy(
        "k8s-no-secret-env",
        "No secret in a pod's env or argv: not as a value, not from secretKeyRef, not through envFrom; Secrets "
        "are mounted as files.",
        k8s_rules.no_secret_env,
        "Mount the Secret as a volume and point the service at the file (GATEWAY_SECRETS_DIR, *_FILE).",
        config_schema=ALLOWED_SECRET_ENV, rule_kwargs=_allowed_secret_env),
    StackValidationPolicy(
        name="k8s-network-policy-for-every-workload",
        description="A namespace with workloads has a default-deny NetworkPolicy, and every workload is selected by "
                    "a NetworkPolicy of its own.",
        validate=_k8s_network_policies,
        enforcement_level=MANDATORY,
        remediation_steps="Add the workload's flows to stacks/kubernetes/manifests.py:network_policies()."),
]
