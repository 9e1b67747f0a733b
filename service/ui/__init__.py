"""The trajectory viewer: static pages served under ``/ui`` that read the session APIs."""
