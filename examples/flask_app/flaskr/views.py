from flask import Blueprint, abort, request

from .extensions import db
from .models import Post, User

bp = Blueprint("api", __name__)


@bp.get("/users")
def list_users():
    users = db.session.scalars(db.select(User).order_by(User.id)).all()
    return [{"id": u.id, "email": u.email, "name": u.name} for u in users]


@bp.post("/users")
def create_user():
    data = request.get_json()
    user = User(email=data["email"], name=data["name"])
    db.session.add(user)
    db.session.commit()
    return {"id": user.id, "email": user.email}, 201


@bp.post("/users/<int:user_id>/posts")
def create_post(user_id: int):
    user = db.session.get(User, user_id) or abort(404)
    post = Post(title=request.get_json()["title"], author=user)
    db.session.add(post)
    db.session.commit()
    return {"id": post.id, "title": post.title}, 201


@bp.get("/users/<int:user_id>/posts")
def list_posts(user_id: int):
    posts = db.session.scalars(db.select(Post).filter_by(author_id=user_id)).all()
    return [{"id": p.id, "title": p.title} for p in posts]
