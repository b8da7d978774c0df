"""The KubernetesNode component: declares stacks/kubernetes/manifests.py's objects on a cluster.

The target ``kubernetes`` of the same program (stacks/__main__.py picks it from ``target``).
What is built from this repository (engine, gateway, quantize images) is built on the Docker
host named by ``docker_host`` with the same recipes as the Docker target and pushed to
``kubernetes.image_registry``; everything else is pulled by the cluster, pinned.
Passwords are generated (pulumi-random) as on Docker and reach the pods only as Secret files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
import pulumi_kubernetes as k8s

from stacks import containers, naming
from stacks.config import NodeConfig
from stacks.images import ENGINE_BUILD, GATEWAY_BUILD, QUANTIZE_BUILD, BuildRecipe
from stacks.kubernetes import manifests
from stacks.postgres import DATABASE, USER
from stacks.redis import redis_conf

# kind -> the typed pulumi-kubernetes class (anything else is a CustomResource).
# Each takes the resource name, opts and the manifest's fields as keyword arguments.
BUILT_IN: dict[tuple[str, str], Callable[..., pulumi.CustomResource]] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "PersistentVolumeClaim"): k8s.core.v1.PersistentVolumeClaim,
    ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("batch/v1", "Job"): k8s.batch.v1.Job,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("networking.k8s.io/v1", "Ingress"): k8s.networking.v1.Ingress,
}
_SNAKE = {"stringData": "string_data"}


@dataclass(frozen=True)
class KubernetesNodeArgs:
    config: NodeConfig


class KubernetesNode(pulumi.ComponentResource):
    def __init__(self, name: str, args: KubernetesNodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:KubernetesNode", name, None, opts)
        settings, secrets = args.config.settings, args.config.secrets
        k8s_settings = settings.kubernetes
        assert k8s_settings is not None
        images = settings.images

        # -- images built from this repository, pushed to the cluster's registry -------------------
        builder = docker.Provider("image-builder", host=settings.docker_host, opts=pulumi.ResourceOptions(parent=self))
        device = settings.engine.spec.device
        registry, ca = k8s_settings.image_registry, settings.build_ca_certificates
        # One engine image per device the groups run on (the first generate group's first, as always).
        devices = dict.fromkeys([device, *(group.spec.device for group in settings.engines)])
        engine_images = {d: self._pushed(f"engine-{d}", ENGINE_BUILD, images["vllm_gpu" if d == "cuda" else "vllm_cpu"],
                                         ca, registry, builder) for d in devices}
        gateway_image = self._pushed("gateway", GATEWAY_BUILD, images["python"], ca, registry, builder)
        quantize_image = (self._pushed("quantize", QUANTIZE_BUILD, images["python"], ca, registry, builder)
                          if settings.quantize is not None else None)

        # -- generated secrets (as on Docker), or the external data stores' URLs -----------------------
        external = k8s_settings.data_stores == "external"
        self.admin_token = containers.generated_secret("gateway-admin-token", self, length=48)
        if external:
            secret_values = manifests.SecretValues(
                postgres_password=None, redis_password=None, redis_conf=None,
                database_url=secrets.external_database_url, redis_url=secrets.external_redis_url,
                admin_token=self.admin_token, tls_private_key=secrets.tls_private_key)
        else:
            postgres_password = containers.generated_secret("postgres-password", self)
            redis_password = containers.generated_secret("redis-password", self)
            secret_values = manifests.SecretValues(
                postgres_password=postgres_password,
                redis_password=redis_password,
                redis_conf=pulumi.Output.secret(redis_password.apply(redis_conf)),
                database_url=pulumi.Output.secret(pulumi.Output.concat(
                    "postgresql://", USER, ":", postgres_password, "@", naming.POSTGRES, ":",
                    str(naming.POSTGRES_PORT), "/", DATABASE)),
                redis_url=pulumi.Output.secret(pulumi.Output.concat(
                    "redis://:", redis_password, "@", naming.REDIS, ":", str(naming.REDIS_PORT), "/0")),
                admin_token=self.admin_token,
                tls_private_key=secrets.tls_private_key,
            )
        self.plan = manifests.build(settings, manifests.Images(
            engines={d: image.image_name for d, image in engine_images.items()},
            gateway=gateway_image.image_name,
            quantize=quantize_image.image_name if quantize_image is not None else None,
            postgres=images["postgres"], redis=images["redis"], traefik=images["traefik"]), secret_values)

        # -- the cluster ------------------------------------------------------------------------------
        self.provider = k8s.Provider("cluster", context=k8s_settings.context, namespace=k8s_settings.namespace,
                                     opts=pulumi.ResourceOptions(parent=self))
        self.resources: dict[str, pulumi.Resource] = {}
        namespace_key = f"namespace-{k8s_settings.namespace}"
        for item in self.plan.manifests:
            after = [*item.depends_on, *([namespace_key] if item.key != namespace_key else [])]
            self.resources[item.key] = self._declare(item, [self.resources[key] for key in dict.fromkeys(after)])
        for chart in self.plan.charts:
            self.resources[f"chart-{chart.name}"] = k8s.helm.v4.Chart(
                chart.name, chart=chart.chart, version=chart.version, namespace=k8s_settings.namespace,
                repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=chart.repository) if chart.repository else None,
                values=chart.values,
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider,
                                            depends_on=[self.resources[key] for key in chart.depends_on],
                                            transforms=[_harden] if chart.harden else None))

        public_url = f"https://{settings.domain}"
        self.outputs = {
            "target": "kubernetes",
            "public_url": public_url,
            "api_base_url": f"{public_url}/v1",
            "served_model_name": settings.engine.spec.served_model_name,
            "namespace": k8s_settings.namespace,
            "internal_endpoints": {"engines": manifests.gateway_spec(settings).engines,
                                   **({"embedding_engines": manifests.gateway_spec(settings).embedding_engines}
                                      if settings.engines_of("embed") else {}),
                                   "gateway": f"http://{naming.GATEWAY}:{settings.gateway.port}"},
            "gateway_admin_token": self.admin_token,
        }
        self.register_outputs({"public_url": public_url})

    def _pushed(self, component: str, recipe: BuildRecipe, base_image: str, ca_certificates: str, registry: str,
                builder: docker.Provider) -> docker.Image:
        """An image built like the Docker target's (same recipe, same source tag), pushed to ``registry``."""
        local = recipe.image_name(component, base_image, ca_certificates)  # llm-node/<component>:src-<hash>
        return docker.Image(
            f"{component}-image",
            image_name=f"{registry}/{local.split('/', 1)[1]}",
            build=docker.DockerBuildArgs(context=recipe.context, dockerfile=recipe.dockerfile,
                                         args=recipe.args(base_image, ca_certificates), platform="linux/amd64"),
            skip_push=False,
            opts=pulumi.ResourceOptions(parent=self, provider=builder),
        )

    def _declare(self, item: manifests.Manifest, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        opts = pulumi.ResourceOptions(
            parent=self, provider=self.provider, depends_on=depends_on,
            ignore_changes=list(item.ignore_changes) or None,
            custom_timeouts=pulumi.CustomTimeouts(create=f"{item.create_timeout_seconds}s")
            if item.create_timeout_seconds else None)
        cls = BUILT_IN.get((item.api_version, item.kind))
        if cls is None:
            return k8s.apiextensions.CustomResource(item.key, api_version=item.api_version, kind=item.kind,
                                                    opts=opts, **item.body)
        return cls(item.key, opts=opts, **{_SNAKE.get(key, key): value for key, value in item.body.items()})


def _harden(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
    """Applied to a chart's rendered objects (Pulumi transforms reach a packaged component's children)."""
    props = manifests.harden_chart_workload(args.type_, args.props)
    return pulumi.ResourceTransformResult(props=props, opts=args.opts) if props is not None else None
