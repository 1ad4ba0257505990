// The face-api.js side of benchmarks/peers.py: @vladmandic/face-api run as its authors ship it for Node.js without
// native add-ons (dist/face-api.node-wasm.js on @tensorflow/tfjs + @tensorflow/tfjs-backend-wasm), with the weights
// from the package's own model/ folder (nets.X.loadFromDisk, as demo/node-wasm.js does).
//
// Installed outside the repository by `bash benchmarks/peer_env.sh --faceapi` (pinned: benchmarks/faceapi/).
// peers.py starts this once and drives it over a pipe, one JSON command per line on stdin, one JSON answer per line
// on stdout (library chatter goes to stderr), so peers.py times each command with peer_worker.timed() like the
// other sides. Images come as raw RGB pixels that peers.py decoded (the same pixels every system gets): a .bin
// file of uint8 H x W x 3 arrays back to back, and their shapes.
//
// Commands:
//   {"cmd": "load", "name": N, "bin": PATH, "shapes": [[h, w, 3], ...]}       keep an image set in memory
//   {"cmd": "classify", "name": N, "batch": B, "limit": K, "only": [i, ...], "return": bool}
//       the expression network alone on each whole image (a face crop): faceExpressionNet.predictExpressions on
//       B images at a time (B = 1: one plain call per crop); its own resize to 112x112 and normalisation included
//   {"cmd": "detect", "name": N, "limit": K, "only": [i, ...], "return": bool}   (limit: the first K; only: these)
//       the library's pipeline on each image: detectAllFaces(image, detector options).withFaceLandmarks()
//       .withFaceExpressions() (each face cut at its landmark-aligned box, as face-api does after landmarks)
//   {"cmd": "quit"}
// Every answer carries "ms" (wall time of the command inside Node). Probabilities are in face-api's label order
// (FACE_EXPRESSION_LABELS, given by "info"); peers.py maps them to FER2013's names.
//
// Usage: node benchmarks/faceapi_peer.js --root NPM_PREFIX [--detector ssd|tiny] [--min-confidence P]
//        [--no-landmarks] [--threads 1]

'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');

function parseArgs(argv) {
  const out = { root: null, detector: 'ssd', minConfidence: null, landmarks: true, threads: 1 };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--root') out.root = argv[++i];
    else if (a === '--detector') out.detector = argv[++i];
    else if (a === '--min-confidence') out.minConfidence = Number(argv[++i]);
    else if (a === '--no-landmarks') out.landmarks = false;
    else if (a === '--threads') out.threads = Number(argv[++i]);
    else throw new Error(`unknown argument ${a}`);
  }
  if (!out.root) throw new Error('--root NPM_PREFIX is required (bash benchmarks/peer_env.sh --faceapi)');
  if (!['ssd', 'tiny'].includes(out.detector)) throw new Error(`--detector ${out.detector}: ssd or tiny`);
  return out;
}

// stdout carries the protocol only: anything a library prints goes to stderr.
const send = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
for (const k of ['log', 'info', 'warn', 'debug']) console[k] = (...a) => process.stderr.write(`${a.join(' ')}\n`);

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const req = (m) => require(require.resolve(m, { paths: [args.root] }));
  const tf = req('@tensorflow/tfjs');
  const wasm = req('@tensorflow/tfjs-backend-wasm');
  const faceapi = req('@vladmandic/face-api/dist/face-api.node-wasm.js');
  // No setWasmPaths: in Node the backend reads its .wasm files from its own dist/ folder (no network).
  if (wasm.setThreadsCount) wasm.setThreadsCount(args.threads);
  await tf.setBackend('wasm');
  await tf.ready();
  const modelDir = path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json', { paths: [args.root] })),
    'model');
  const detectorNet = args.detector === 'ssd' ? faceapi.nets.ssdMobilenetv1 : faceapi.nets.tinyFaceDetector;
  await detectorNet.loadFromDisk(modelDir);
  if (args.landmarks) await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
  await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);
  const conf = args.minConfidence ? { minConfidence: args.minConfidence } : {};
  const options = args.detector === 'ssd'
    ? new faceapi.SsdMobilenetv1Options(conf) // library defaults: minConfidence 0.5, maxResults 100
    : new faceapi.TinyFaceDetectorOptions(args.minConfidence ? { scoreThreshold: args.minConfidence } : {});

  const sets = new Map();
  const tensor = (set, i) => {
    const [h, w, c] = set.shapes[i];
    const px = new Uint8Array(set.buf.buffer, set.buf.byteOffset + set.offsets[i], h * w * c);
    return tf.tensor3d(px, [h, w, c], 'int32');
  };
  const probs = (e) => faceapi.FACE_EXPRESSION_LABELS.map((k) => e[k]);

  async function classify(set, batch, order, keep) {
    const out = [];
    for (let s = 0; s < order.length; s += batch) {
      const ts = order.slice(s, s + batch).map((i) => tensor(set, i));
      // A single tensor is the plain one-face call; an array is face-api's batch input.
      const res = await faceapi.nets.faceExpressionNet.predictExpressions(batch === 1 ? ts[0] : ts);
      tf.dispose(ts);
      if (keep) for (const e of (batch === 1 ? [res] : res)) out.push(probs(e));
    }
    return out;
  }

  async function detect(set, order, keep) {
    const out = [];
    for (const i of order) {
      const t = tensor(set, i);
      let task = faceapi.detectAllFaces(t, options);
      if (args.landmarks) task = task.withFaceLandmarks();
      const faces = await task.withFaceExpressions();
      t.dispose();
      if (keep) {
        out.push(faces.map((f) => {
          const b = f.detection.box;
          return { box: [b.x, b.y, b.width, b.height], score: f.detection.score, probs: probs(f.expressions) };
        }));
      }
    }
    return out;
  }

  send({
    ready: true,
    faceapi_version: faceapi.version,
    tfjs_version: tf.version_core,
    backend: tf.getBackend(),
    wasm_simd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
    wasm_threads: wasm.getThreadsCount ? wasm.getThreadsCount() : 1,
    wasm_multithread: await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'),
    node_version: process.version,
    labels: faceapi.FACE_EXPRESSION_LABELS,
    detector: args.detector === 'ssd'
      ? `ssdMobilenetv1 (minConfidence ${options.minConfidence}, maxResults ${options.maxResults})`
      : `tinyFaceDetector (inputSize ${options.inputSize}, scoreThreshold ${options.scoreThreshold})`,
    landmarks: args.landmarks ? 'faceLandmark68Net (faces cut at the landmark-aligned box)' : 'none',
    model_dir: modelDir,
  });

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    const t0 = performance.now();
    try {
      if (cmd.cmd === 'quit') break;
      if (cmd.cmd === 'load') {
        const buf = fs.readFileSync(cmd.bin);
        const offsets = [];
        let o = 0;
        for (const [h, w, c] of cmd.shapes) {
          if (c !== 3) throw new Error(`${cmd.name}: images must be H x W x 3 RGB, got ${c} channels`);
          offsets.push(o);
          o += h * w * c;
        }
        if (o !== buf.length) throw new Error(`${cmd.bin}: ${buf.length} bytes, the shapes say ${o}`);
        sets.set(cmd.name, { buf, shapes: cmd.shapes, offsets });
        send({ ok: true, n: cmd.shapes.length, ms: performance.now() - t0 });
        continue;
      }
      const set = sets.get(cmd.name);
      if (!set) throw new Error(`no image set ${cmd.name} loaded`);
      const n = Math.min(set.shapes.length, cmd.limit || set.shapes.length);
      const order = cmd.only || [...Array(n).keys()];
      if (order.some((i) => !(i >= 0 && i < set.shapes.length))) throw new Error(`${cmd.name}: index out of range`);
      const keep = cmd.return !== false;
      let result;
      if (cmd.cmd === 'classify') result = await classify(set, cmd.batch || 64, order, keep);
      else if (cmd.cmd === 'detect') result = await detect(set, order, keep);
      else throw new Error(`unknown command ${cmd.cmd}`);
      send({ ok: true, n: order.length, ms: performance.now() - t0, result: keep ? result : null, tensors: tf.memory().numTensors });
    } catch (e) {
      send({ ok: false, error: String(e && e.stack ? e.stack : e) });
    }
  }
}

main().catch((e) => {
  process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
