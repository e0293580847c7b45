"""The few HTML pages of the browser leg of sign-in (pure rendering).

Plain HTML with no JavaScript, readable by screen readers (one ``main``,
labelled inputs, real buttons). Every page carries headers that forbid framing
(clickjacking a one-click Approve is the classic device-flow attack) and limit
where forms may post.
"""

from __future__ import annotations

from html import escape

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}"
    "h1{font-size:1.4rem}code,.code{font-family:ui-monospace,monospace;font-size:1.3rem;letter-spacing:.1em}"
    "input{font:inherit;font-size:1.2rem;padding:.4rem;width:12rem;text-transform:uppercase}"
    "button{font:inherit;padding:.5rem 1.2rem;margin:.5rem .5rem 0 0}"
    ".warn{background:#fff4e5;border-left:4px solid #e8a33d;padding:.5rem .8rem}"
    ".err{background:#fdecea;border-left:4px solid #d93025;padding:.5rem .8rem}"
)


def security_headers(form_action: tuple[str, ...]) -> dict[str, str]:
    actions = " ".join(("'self'", *form_action))
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; form-action {actions}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} · Gatehouse</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def confirm(*, user_code: str, csrf: str, notice: str | None = None, error: str | None = None) -> str:
    """The code entry/confirmation page. A prefilled code is shown, never submitted for the person."""
    parts = []
    if error:
        parts.append(f'<p class="err" role="alert">{escape(error)}</p>')
    parts.append(
        '<p class="warn"><strong>Only continue if you started this sign-in yourself</strong>, '
        "in Claude Code on a computer you trust, and the code below matches the one it shows. "
        "If someone sent you this link, choose Deny.</p>"
    )
    if notice:
        parts.append(f"<p>{escape(notice)}</p>")
    parts.append(
        '<form method="post" action="/device">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<p><label for="user_code">Code shown in Claude Code</label><br>'
        f'<input id="user_code" name="user_code" value="{escape(user_code)}" autocomplete="off" '
        'spellcheck="false" maxlength="9" required></p>'
        '<button type="submit" name="action" value="approve">Approve and sign in</button>'
        '<button type="submit" name="action" value="deny">Deny</button>'
        "</form>"
    )
    return _page("Sign in to Claude Code", "".join(parts))


def message(title: str, text: str, *, detail: str | None = None) -> str:
    body = f"<p>{escape(text)}</p>"
    if detail:
        body += f"<p>{escape(detail)}</p>"
    return _page(title, body)


def signed_in(email: str | None) -> str:
    who = f" as <strong>{escape(email)}</strong>" if email else ""
    return _page(
        "You are signed in",
        f"<p>Claude Code is now signed in{who}. You can close this window and go back to your terminal.</p>",
    )
