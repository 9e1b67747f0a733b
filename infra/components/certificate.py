"""A DNS-validated ACM certificate for the stack's domain, in the stack's own region."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# How long `pulumi up` waits for ACM to see the validation record and issue the certificate.
VALIDATION_TIMEOUT = "45m"


@dataclass
class CertificateArgs:
    """`domain_name`, certified by a validation record in the Route 53 zone `hosted_zone_id`
    (which must be authoritative for the name)."""

    domain_name: str
    hosted_zone_id: str


class Certificate(pulumi.ComponentResource):
    """Certificate, its DNS validation record and the validation that waits for issuance.

    Output: `certificate_arn`, known only once ACM has issued it, so the HTTPS listener that
    uses it is created after the certificate is valid.
    """

    certificate_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: CertificateArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Certificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        certificate = aws.acm.Certificate(
            name,
            domain_name=args.domain_name,
            validation_method="DNS",
            opts=child,
        )
        option = certificate.domain_validation_options[0]
        record = aws.route53.Record(
            f"{name}-validation",
            zone_id=args.hosted_zone_id,
            name=option.resource_record_name,
            type=option.resource_record_type,
            records=[option.resource_record_value],
            ttl=300,
            allow_overwrite=True,
            opts=child,
        )
        validation = aws.acm.CertificateValidation(
            name,
            certificate_arn=certificate.arn,
            validation_record_fqdns=[record.fqdn],
            opts=pulumi.ResourceOptions(
                parent=self, custom_timeouts=pulumi.CustomTimeouts(create=VALIDATION_TIMEOUT)
            ),
        )
        self.certificate_arn = validation.certificate_arn
        self.register_outputs({"certificate_arn": self.certificate_arn})
