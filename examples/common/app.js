// What the example pages share (every example app serves this file at
// /app.js): element lookup, the error line, JSON calls to the app's own
// API, and the login form and logout button of the apps that have them.

export const $ = (id) => document.getElementById(id);

export function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

export async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(data.error || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

// The login form (#login-form, #name) logs in, then calls `start`; the
// logout button (#logout) logs out and reloads the page.
export function wireLogin(start) {
  $('login-form').onsubmit = async (ev) => {
    ev.preventDefault();
    showError('');
    try {
      await api('POST', '/api/login', { name: $('name').value });
      await start();
    } catch (e) {
      showError(e.message);
    }
  };

  $('logout').onclick = async () => {
    await api('POST', '/api/logout');
    location.reload();
  };
}
