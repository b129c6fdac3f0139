"""What gunicorn serves: app = create_app()."""

from service import create_app

app = create_app()
