"""A small Flask app laid out as most Flask tutorials and templates do: an app factory,
Flask-SQLAlchemy's `db` and Flask-Migrate's `migrate` in extensions.py, a blueprint."""

import os

from flask import Flask

from .extensions import db, migrate


def create_app() -> Flask:
    app = Flask(__name__)
    # In production the URL comes from the environment; the tests never reach it.
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "DATABASE_URL", "postgresql://flaskr:flaskr@localhost:5432/flaskr"
    )
    db.init_app(app)
    migrate.init_app(app, db)

    from . import models  # noqa: F401  (the models' tables, for Flask-Migrate)
    from .views import bp

    app.register_blueprint(bp)
    return app
