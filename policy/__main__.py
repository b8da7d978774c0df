"""Entry point of the llm-node policy pack (run by the Pulumi CLI: --policy-pack policy)."""

from pack import MANDATORY, PACK_NAME, POLICIES
from pulumi_policy import PolicyPack

PolicyPack(name=PACK_NAME, policies=POLICIES, enforcement_level=MANDATORY)
