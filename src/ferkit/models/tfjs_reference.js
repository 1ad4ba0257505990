// Runs a TF.js graph model with TensorFlow.js itself (pure JavaScript, CPU backend): the reference that
// ferkit.models.tfjs is checked against. Usage:
//   node tfjs_reference.js MODEL_JSON INPUT_F32 SHAPE(1,224,224,3) OUTPUT_NAME[,NAME...] OUT_PREFIX
// It writes OUT_PREFIX.<i>.f32 (raw float32) and OUT_PREFIX.<i>.json (the shape) for each output.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelJson, inputFile, shapeText, outputs, outPrefix] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const doc = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const specs = [];
  const buffers = [];
  for (const group of doc.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: doc.modelTopology, weightSpecs: specs, weightData, format: doc.format,
    signature: doc.signature, userDefinedMetadata: doc.userDefinedMetadata,
  }));
  const raw = fs.readFileSync(inputFile);
  const data = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const x = tf.tensor(data, shapeText.split(',').map(Number), 'float32');
  const names = outputs.split(',');
  let ys = model.execute(x, names);
  if (!Array.isArray(ys)) ys = [ys];
  ys.forEach((y, i) => {
    fs.writeFileSync(`${outPrefix}.${i}.f32`, Buffer.from(y.dataSync().buffer));
    fs.writeFileSync(`${outPrefix}.${i}.json`, JSON.stringify(y.shape));
  });
}
main().catch((e) => { console.error(String(e && e.message || e)); process.exit(1); });
