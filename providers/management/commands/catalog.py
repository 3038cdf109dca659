"""manage.py catalog export [--output FILE] [--tenant SLUG] | apply FILE [--dry-run] [--prune]"""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from providers.declarative import CatalogError, catalog_apply, catalog_dump, catalog_export, catalog_load
from tenants.models import Tenant


class Command(BaseCommand):
    help = ("The declarative catalog (YAML): providers, keys as os.environ/NAME references, models, aliases, tenant "
            "enablements and grants. `export` writes it; `apply` makes the database match a file (ours, or the "
            "LiteLLM Proxy's config.yaml) in one transaction and prints the changes.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="Write the catalog as YAML (stdout, or --output FILE).")
        export.add_argument("--output", "-o", help="File to write (default: stdout).")
        export.add_argument("--tenant", help="Only this tenant's providers (its slug).")
        apply = sub.add_parser("apply", help="Make the database match a catalog file; idempotent.")
        apply.add_argument("file", help="A catalog YAML file, or a LiteLLM Proxy config.yaml (model_list).")
        apply.add_argument("--dry-run", action="store_true", help="Print the changes, write nothing.")
        apply.add_argument("--prune", action="store_true",
                           help="Also remove providers, models, enablements and grants the file does not list.")

    def handle(self, *args, action, **options):
        if action == "export":
            return self.export(output=options.get("output"), tenant_slug=options.get("tenant"))
        return self.apply(Path(options["file"]), dry_run=options["dry_run"], prune=options["prune"])

    def export(self, *, output, tenant_slug):
        tenant = None
        if tenant_slug:
            tenant = Tenant.objects.filter(slug=tenant_slug).first()
            if tenant is None:
                raise CommandError(f"--tenant: no tenant with slug '{tenant_slug}'")
        data, warnings = catalog_export(tenant=tenant)
        text = catalog_dump(data, warnings)
        for warning in warnings:
            self.stderr.write(f"warning: {warning}")
        if output:
            Path(output).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {len(data['providers'])} provider(s) to {output}")
        else:
            self.stdout.write(text, ending="")

    def apply(self, path: Path, *, dry_run, prune):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            result = catalog_apply(catalog_load(text), prune=prune, dry_run=dry_run)
        except CatalogError as exc:
            raise CommandError(f"{path}: {exc} (nothing was written)") from None
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        for line in result.changes:
            self.stdout.write(line)
        self.stdout.write(result.summary)
