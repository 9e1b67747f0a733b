"""The service's credentials as SSM SecureString parameters of this stack.

Named `/rlm-py/<stack>/<VARIABLE>` (service.constants.ssm_name), so stacks in one account
and region never share a parameter, nor collide with one a dev-box user created by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.naming import StackNames


@dataclass
class SecretsArgs:
    """Secret values (from `pulumi config set --secret`) and an optional KMS key.

    Without `kms_key_id` SSM uses the account's `aws/ssm` key, which the instance role may
    use through SSM without a KMS grant.
    """

    names: StackNames
    openai_api_key: pulumi.Input[str]
    rlm_api_keys: pulumi.Input[str]
    kms_key_id: str | None = None


class Secrets(pulumi.ComponentResource):
    """Writes `OPENAI_API_KEY` and `RLM_API_KEYS` to SSM Parameter Store, encrypted.

    Outputs: `env_params` (environment variable -> parameter name, for the boot script),
    `arns` (for the instance role's read policy) and `revision` (changes with any value).
    """

    env_params: dict[str, str]
    arns: pulumi.Output[list[str]]
    revision: pulumi.Output[str]

    def __init__(
        self, name: str, args: SecretsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Secrets", name, None, opts)
        values = {"OPENAI_API_KEY": args.openai_api_key, "RLM_API_KEYS": args.rlm_api_keys}
        self.env_params = {env: args.names.parameter(env) for env in values}
        params = [
            aws.ssm.Parameter(
                f"{name}-{env.lower().replace('_', '-')}",
                name=param_name,
                type="SecureString",
                # Wrapped again so the value stays masked in diffs even if given plainly.
                value=pulumi.Output.secret(values[env]),
                key_id=args.kms_key_id,
                description=f"rlm-py {env} of stack {args.names.stack}, read at boot by its hosts",
                opts=pulumi.ResourceOptions(parent=self),
            )
            for env, param_name in self.env_params.items()
        ]
        self.arns = pulumi.Output.all(*[p.arn for p in params])
        self.revision = pulumi.Output.all(*[p.version for p in params]).apply(
            lambda versions: ".".join(str(v) for v in versions)
        )
        self.register_outputs({"arns": self.arns, "revision": self.revision})
