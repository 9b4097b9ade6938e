// The web page of `osp serve` (GET /): one self-contained HTML file, no external resources.
#include "osp/pipeline/server.h"

namespace osp::pipeline {

const char* server_page_html() {
  return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>osp</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} label{display:inline-block;margin:.3em 1em .3em 0}
textarea{width:100%;height:4.5em;font:inherit} input{width:6em}
#bar{height:14px;background:#eee;border-radius:7px;overflow:hidden;margin:.8em 0}
#fill{height:100%;width:0;background:#3a7;transition:width .2s}
#status{min-height:1.4em} .err{color:#b00}
video,img{max-width:100%;min-width:min(100%,320px);margin-top:1em;display:block;image-rendering:pixelated}
button{font:inherit;padding:.35em 1.2em}
</style></head><body>
<h1>osp — text to video</h1>
<form id="f">
<textarea id="prompt" placeholder="a red fox runs through the snowy forest" required></textarea><br>
<label>size <input id="size" value="" placeholder="832x480"></label>
<label>frames <input id="frames" type="number" placeholder="81"></label>
<label>steps <input id="steps" type="number" placeholder="50"></label>
<label>seed <input id="seed" type="number" placeholder="random"></label>
<label>guidance <input id="guidance" type="number" step="0.1" placeholder="5"></label>
<label>token <input id="token" type="password" placeholder="(if any)"></label><br>
<button id="go" type="submit">Generate</button> <button id="cancel" type="button" disabled>Cancel</button>
</form>
<div id="bar"><div id="fill"></div></div>
<div id="status"></div>
<div id="result"></div>
<script>
const $ = id => document.getElementById(id);
let current = null, es = null;
$('token').value = localStorage.getItem('osp_token') || '';
function headers() {
  const h = {'Content-Type': 'application/json'};
  const t = $('token').value; if (t) h['Authorization'] = 'Bearer ' + t;
  return h;
}
function q() { const t = $('token').value; return t ? '?token=' + encodeURIComponent(t) : ''; }
function show(s) {
  const pct = Math.round(100 * (s.progress || 0));
  $('fill').style.width = pct + '%';
  let txt = s.status + (s.stage && s.stage !== s.status ? ' — ' + s.stage : '');
  if (s.steps) txt += ' — step ' + s.step + '/' + s.steps;
  if (s.eta_s >= 0 && s.status === 'running') txt += ' — ETA ' + s.eta_s.toFixed(1) + ' s';
  if (s.status === 'queued') txt += ' (position ' + s.queue_position + ')';
  if (s.error) txt += ' — ' + s.error;
  $('status').textContent = txt;
  $('status').className = s.status === 'failed' ? 'err' : '';
  document.body.dataset.state = s.status;
}
function finish(s) {
  if (es) { es.close(); es = null; }
  $('go').disabled = false; $('cancel').disabled = true;
  show(s);
  if (s.status === 'succeeded') {
    if (s.video_url) {
      const v = document.createElement('video');
      v.id = 'video'; v.controls = true; v.autoplay = true; v.loop = true; v.muted = true;
      if (s.poster_url) v.poster = s.poster_url + q();
      v.src = s.video_url + q();
      $('result').replaceChildren(v);
    } else if (s.frames_url) {
      const i = document.createElement('img'); i.id = 'video'; i.src = s.frames_url + q();
      $('result').replaceChildren(i);
    }
  }
}
$('f').addEventListener('submit', async ev => {
  ev.preventDefault();
  localStorage.setItem('osp_token', $('token').value);
  const body = {prompt: $('prompt').value};
  if ($('size').value) body.size = $('size').value;
  for (const k of ['frames', 'steps', 'seed']) if ($(k).value !== '') body[k] = parseInt($(k).value);
  if ($('guidance').value !== '') body.guidance = parseFloat($('guidance').value);
  $('result').replaceChildren(); $('fill').style.width = '0';
  const r = await fetch('/v1/generations', {method: 'POST', headers: headers(), body: JSON.stringify(body)});
  const s = await r.json();
  if (!r.ok) { $('status').textContent = 'error ' + r.status + ': ' + s.error; $('status').className = 'err'; return; }
  follow(s);
});
const TERMINAL = ['succeeded', 'failed', 'cancelled'];
// Follows job s (its status object) to its end: the event stream while it runs.
function follow(s) {
  current = s.id; show(s);
  if (TERMINAL.includes(s.status)) { finish(s); return; }
  $('go').disabled = true; $('cancel').disabled = false;
  es = new EventSource('/v1/generations/' + s.id + '/events' + q());
  es.addEventListener('progress', e => show(JSON.parse(e.data)));
  for (const k of TERMINAL) es.addEventListener(k, e => finish(JSON.parse(e.data)));
  es.onerror = async () => {  // the stream ended or broke: ask once
    if (!es) return;
    const r2 = await fetch('/v1/generations/' + current, {headers: headers()});
    const s2 = await r2.json();
    if (TERMINAL.includes(s2.status)) finish(s2);
  };
}
// ?job=ID shows an existing job (running: followed live; finished: its result).
async function open_job(id) {
  const r = await fetch('/v1/generations/' + encodeURIComponent(id), {headers: headers()});
  const s = await r.json();
  if (!r.ok) { $('status').textContent = 'error ' + r.status + ': ' + s.error; $('status').className = 'err'; return; }
  follow(s);
}
// ?prompt=...&size=...&frames=...&steps=...&seed=... fills the form; &autostart=1 submits it;
// ?job=ID shows that job instead.
const params = new URLSearchParams(location.search);
for (const k of ['prompt', 'size', 'frames', 'steps', 'seed', 'guidance', 'token'])
  if (params.has(k)) $(k).value = params.get(k);
if (params.has('job')) open_job(params.get('job'));
else if (params.get('autostart') === '1') $('f').requestSubmit();
$('cancel').addEventListener('click', () => {
  if (current) fetch('/v1/generations/' + current, {method: 'DELETE', headers: headers()});
});
</script></body></html>
)HTML";
}

}  // namespace osp::pipeline
