"""A learner's correct layers.py for tests/test_exercise.py: the 14 names written apart from
the lesson (per-tap loops, einsum, its own formulas). The mistake gallery there edits it."""
import numpy as np


class Dense:
    def __init__(self, name, W, b):
        self.name, self.W, self.b = name, W, b
        self.params = {f"{name}/W": W, f"{name}/b": b}
        self.grads = {}

    def forward(self, x, train=True):
        if train:
            self.x = x
        return np.einsum("ni,io->no", x, self.W) + self.b

    def backward(self, dz):
        self.grads = {f"{self.name}/W": np.einsum("ni,no->io", self.x, dz),
                      f"{self.name}/b": np.einsum("no->o", dz)}
        return np.einsum("no,io->ni", dz, self.W)


class _Elementwise:
    params = {}
    grads = {}


class ReLU(_Elementwise):
    def forward(self, x, train=True):
        if train:
            self.on = (x > 0).astype(x.dtype)
        return x * (x > 0)

    def backward(self, d):
        return d * self.on


class LeakyReLU(_Elementwise):
    def __init__(self, alpha=0.2):
        self.alpha = alpha

    def forward(self, x, train=True):
        slope = np.where(x > 0, 1.0, self.alpha).astype(x.dtype)
        if train:
            self.slope = slope
        return x * slope

    def backward(self, d):
        return d * self.slope


class Tanh(_Elementwise):
    def forward(self, x, train=True):
        e = np.exp(-2 * np.abs(x))
        a = np.sign(x) * (1 - e) / (1 + e)
        if train:
            self.a, self.x = a, x
        return a

    def backward(self, d):
        return d - d * self.a * self.a


class Sigmoid(_Elementwise):
    def forward(self, x, train=True):
        e = np.exp(-np.abs(x))  # never overflows
        a = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
        if train:
            self.a, self.x = a, x
        return a

    def backward(self, d):
        return d * (self.a - self.a * self.a)


class Flatten(_Elementwise):
    def forward(self, x, train=True):
        if train:
            self.shape = x.shape
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))

    def backward(self, d):
        return d.reshape(self.shape)


def _pad_amounts(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class Conv2D:
    def __init__(self, name, W, b, stride=1, padding="same"):
        self.name, self.W, self.b, self.stride, self.padding = name, W, b, stride, padding
        self.params = {f"{name}/W": W, f"{name}/b": b}
        self.grads = {}

    def forward(self, x, train=True):
        k, s = self.W.shape[0], self.stride
        n, h, w, c = x.shape
        if self.padding == "same":
            (t, bo), (le, r) = _pad_amounts(h, k, s), _pad_amounts(w, k, s)
        else:
            t = bo = le = r = 0
        xp = np.zeros((n, h + t + bo, w + le + r, c), dtype=x.dtype)
        xp[:, t:t + h, le:le + w] = x
        ho, wo = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
        z = np.zeros((n, ho, wo, self.W.shape[3]), dtype=x.dtype)
        for p in range(k):
            for q in range(k):
                patch = xp[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s]
                z += np.einsum("nijc,co->nijo", patch, self.W[p, q])
        if train:
            self.saved = (xp, (t, le), x.shape)
        return z + self.b

    def backward(self, dz):
        xp, (t, le), shape = self.saved
        k, s = self.W.shape[0], self.stride
        ho, wo = dz.shape[1:3]
        dxp = np.zeros_like(xp)
        dW = np.zeros_like(self.W)
        for p in range(k):
            for q in range(k):
                rows = slice(p, p + s * (ho - 1) + 1, s)
                cols = slice(q, q + s * (wo - 1) + 1, s)
                dW[p, q] = np.einsum("nijc,nijo->co", xp[:, rows, cols], dz)
                dxp[:, rows, cols] += np.einsum("nijo,co->nijc", dz, self.W[p, q])
        self.grads = {f"{self.name}/W": dW, f"{self.name}/b": dz.sum(axis=(0, 1, 2))}
        return dxp[:, t:t + shape[1], le:le + shape[2]]


class MaxPool2D(_Elementwise):
    def __init__(self, size=2, stride=2):
        self.size, self.stride = size, stride

    def forward(self, x, train=True):
        k, s = self.size, self.stride
        n, h, w, c = x.shape
        ho, wo = (h - k) // s + 1, (w - k) // s + 1
        best = np.full((n, ho, wo, c), -np.inf, dtype=x.dtype)
        where = np.zeros((n, ho, wo, c), dtype=int)
        for p in range(k):
            for q in range(k):
                v = x[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s]
                better = v > best  # strict: the first maximum keeps the window
                best = np.where(better, v, best)
                where = np.where(better, p * k + q, where)
        if train:
            self.where, self.shape = where, x.shape
        return best

    def backward(self, d):
        k, s = self.size, self.stride
        ho, wo = d.shape[1:3]
        dx = np.zeros(self.shape, dtype=d.dtype)
        for p in range(k):
            for q in range(k):
                dx[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s] += d * (self.where == p * k + q)
        return dx


class AvgPool2D(_Elementwise):
    def __init__(self, size=2, stride=2):
        self.size, self.stride = size, stride

    def forward(self, x, train=True):
        k, s = self.size, self.stride
        n, h, w, c = x.shape
        ho, wo = (h - k) // s + 1, (w - k) // s + 1
        total = np.zeros((n, ho, wo, c), dtype=x.dtype)
        for p in range(k):
            for q in range(k):
                total += x[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s]
        if train:
            self.shape = x.shape
        return total / (k * k)

    def backward(self, d):
        k, s = self.size, self.stride
        ho, wo = d.shape[1:3]
        dx = np.zeros(self.shape, dtype=d.dtype)
        for p in range(k):
            for q in range(k):
                dx[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s] += d / (k * k)
        return dx


class Dropout(_Elementwise):
    def __init__(self, rate):
        self.rate, self.mask = rate, None

    def forward(self, x, train=True):
        return x * self.mask.astype(x.dtype) if train else x

    def backward(self, d):
        return d * self.mask.astype(d.dtype)


class BatchNorm:
    def __init__(self, name, params, momentum=0.99, epsilon=1e-3):
        self.name, self.momentum, self.epsilon = name, momentum, epsilon
        self.params = {f"{name}/{k}": params[f"{name}/{k}"]
                       for k in ("gamma", "beta", "moving_mean", "moving_variance")}
        self.gamma = params[f"{name}/gamma"]
        self.beta = params[f"{name}/beta"]
        self.moving_mean = params[f"{name}/moving_mean"]
        self.moving_variance = params[f"{name}/moving_variance"]
        self.grads = {}

    def forward(self, x, train=True):
        axes = tuple(range(x.ndim - 1))
        if train:
            mu = x.mean(axis=axes)
            var = ((x - mu) ** 2).mean(axis=axes)
            self.moving_mean *= self.momentum
            self.moving_mean += (1 - self.momentum) * mu
            self.moving_variance *= self.momentum
            self.moving_variance += (1 - self.momentum) * var
        else:
            mu, var = self.moving_mean, self.moving_variance
        sd = np.sqrt(var + self.epsilon)
        xhat = (x - mu) / sd
        if train:
            self.xhat, self.sd = xhat, sd
        return self.gamma * xhat + self.beta

    def backward(self, d):
        axes = tuple(range(d.ndim - 1))
        dgamma = (d * self.xhat).sum(axis=axes)
        dbeta = d.sum(axis=axes)
        self.grads = {f"{self.name}/gamma": dgamma, f"{self.name}/beta": dbeta}
        dxhat = d * self.gamma
        # the mean over the M values of each feature, own arrangement
        return (dxhat - dxhat.mean(axis=axes) - self.xhat * (dxhat * self.xhat).mean(axis=axes)) / self.sd


def softmax_cross_entropy(logits, y, total=None):
    n = logits.shape[0]
    t = n if total is None else total
    top = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - top)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    picked = logits[np.arange(n), y] - top[:, 0]
    loss = float(np.sum(np.log(s[:, 0]) - picked) / t)
    onehot = np.zeros_like(logits)
    onehot[np.arange(n), y] = 1
    return loss, ((p - onehot) / t).astype(logits.dtype)


class SGD:
    name = "sgd"

    def __init__(self):
        self.iterations = 0

    def step(self, params, grads, lr):
        for key in grads:
            if key in params:
                params[key] -= np.asarray(lr, dtype=params[key].dtype) * grads[key]
        self.iterations += 1


class Adam:
    name = "adam"

    def __init__(self, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.iterations = 0
        self.m, self.v = {}, {}

    def step(self, params, grads, lr):
        self.iterations += 1
        t = self.iterations
        for key, g in grads.items():
            p = params[key]
            m = self.m.setdefault(key, np.zeros_like(p))
            v = self.v.setdefault(key, np.zeros_like(p))
            m[...] = self.beta_1 * m + (1 - self.beta_1) * g
            v[...] = self.beta_2 * v + (1 - self.beta_2) * g * g
            step = lr * np.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
            p -= (step * m / (np.sqrt(v) + self.epsilon)).astype(p.dtype)
