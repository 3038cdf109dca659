"""One command to run the service on embedded defaults: `python -m eneo_site.quickstart`.

- writes `.env` (or ENV_FILE) on first run (DEBUG, fresh SECRET_KEY / ENCRYPTION_KEY / SUPER_API_KEY),
- keeps its state in VAR_DIR (default var/): the SQLite database and kombu's filesystem transport for Celery, so
  no server is needed,
- migrates the database, creates environment-defined providers,
- creates an `admin` superuser with a random password and prints it (first run only),
- starts a Celery worker with beat, and the ASGI server (uvicorn) on http://127.0.0.1:8000.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = Path(os.environ.get("ENV_FILE", BASE_DIR / ".env"))  # the file settings.py reads


def write_env_file() -> bool:
    if ENV_FILE.exists():
        return False
    from cryptography.fernet import Fernet

    ENV_FILE.write_text(
        "# Written by `python -m eneo_site.quickstart` for a local run. See .env.example for every setting.\n"
        "DEBUG=true\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"ENCRYPTION_KEY={Fernet.generate_key().decode()}\n"
        f"SUPER_API_KEY={secrets.token_urlsafe(32)}\n"
        "SECURE_SSL_REDIRECT=false\n"
    )
    ENV_FILE.chmod(0o600)
    return True


def uvicorn_args(host: str, port: str, *, access_log: bool = False) -> list[str]:
    """uvicorn's command-line arguments for our app.

    - Proxy headers: uvicorn by default takes the client address from X-Forwarded-For for connections from
      127.0.0.1 (--forwarded-allow-ips), so anything on this host could pick its own REMOTE_ADDR and slip past
      the per-address lockouts (admin logins, API keys). They are off unless BEHIND_TLS_PROXY is set, and then
      trusted from FORWARDED_ALLOW_IPS (uvicorn's default: 127.0.0.1, a proxy on this host).
    - Logs: no --log-config is needed for masking: when the app loads, Django's logging set-up
      (LOGGING_CONFIG = credentials.masking.configure_logging) adds the masking filter to uvicorn's own handlers.
    """
    from django.conf import settings

    args = ["eneo_site.asgi:application", "--host", host, "--port", str(port)]
    if not settings.BEHIND_TLS_PROXY:
        args.append("--no-proxy-headers")
    if not access_log:
        args.append("--no-access-log")
    return args


def main():
    created_env = write_env_file()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eneo_site.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command, get_commands

    call_command("migrate", interactive=False, verbosity=0)
    if "ensure_env_providers" in get_commands():
        call_command("ensure_env_providers")
    if "ensure_default_schedules" in get_commands():
        call_command("ensure_default_schedules")

    User = get_user_model()
    password = None
    if not User.objects.filter(is_superuser=True).exists():
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)

    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    print("\n  Eneo LLM gateway")
    print(f"  Admin:        http://{host}:{port}/admin/")
    print(f"  API docs:     http://{host}:{port}/api/v1/docs (after admin login)")
    print(f"  OpenAI API:   http://{host}:{port}/v1")
    if password:
        print(f"  Admin login:  admin / {password}   (shown once; change it in the admin)")
    else:
        print("  Admin login:  existing superuser (reset with `python manage.py changepassword admin`)")
    print(f"  Settings:     {ENV_FILE}{' (created)' if created_env else ''}; SUPER_API_KEY is in it.")
    print(f"  Local state:  {settings.VAR_DIR} (VAR_DIR)\n")
    sys.stdout.flush()

    bin_dir = Path(sys.executable).parent
    worker = subprocess.Popen(
        [str(bin_dir / "celery"), "-A", "eneo_site", "worker", "--beat", "--loglevel=INFO", "--concurrency=2",
         "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME],
        cwd=BASE_DIR,
    )
    server = subprocess.Popen([str(bin_dir / "uvicorn"), *uvicorn_args(host, port)], cwd=BASE_DIR)

    def stop(*_):
        for proc in (server, worker):
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
