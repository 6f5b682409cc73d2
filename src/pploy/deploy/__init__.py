"""The deploy manager: projects, locks, jobs under a pty, log following and the web app."""
